import { text } from 'node:stream/consumers';
import { BrokerClient } from '../../client/broker-client.ts';
import { KeychainError, UsageError } from '../../core/errors.ts';
import { canonicalUrl } from '../../core/url.ts';
import { accounts } from '../../secrets/store.ts';
import type { CommandDefinition } from '../command.ts';

export const login: CommandDefinition = {
  path: 'login',
  summary: 'verify an API token with a broker and keep it in the OS keychain',
  define: (command) =>
    command
      .option('--broker <url>', 'the broker URL, e.g. https://jit.example.com')
      .option('--token-stdin', 'read the token from standard input instead of prompting for it'),
  async handler({ options }, ctx) {
    const brokerUrl = canonicalUrl(
      String(options.broker ?? ctx.env.JIT_BROKER_URL ?? ctx.config.profile(ctx.options.profile)?.brokerUrl ?? ''),
    );
    if (!brokerUrl) throw new UsageError('no broker URL given', { hint: 'pass --broker URL' });
    if (!/^https?:\/\/[^/]+/.test(brokerUrl))
      throw new UsageError(`"${brokerUrl}" is not an http(s) URL`, { hint: 'e.g. --broker http://127.0.0.1:8420' });
    const token = await readToken(Boolean(options.tokenStdin), ctx.out.json || Boolean(ctx.env.CI));
    const secrets = await ctx.secrets();
    if (secrets.backend === 'memory') {
      throw new KeychainError('no OS keychain to keep the token in', {
        hint: 'set JIT_BROKER_URL and JIT_TOKEN instead (for CI), or see docs/keychain.md',
      });
    }
    const { subject } = await new BrokerClient({ brokerUrl, token }).whoami();
    await secrets.set(accounts.token(ctx.options.profile), token);
    ctx.config.setProfile(ctx.options.profile, { ...ctx.config.profile(ctx.options.profile), brokerUrl });
    const data = { profile: ctx.options.profile, brokerUrl, subject, keychain: secrets.backend };
    return {
      data,
      human: `Logged in to ${brokerUrl} as ${subject} (profile ${data.profile}; token kept in the OS keychain via ${secrets.backend}).`,
    };
  },
};

async function readToken(fromStdin: boolean, noPrompt: boolean): Promise<string> {
  if (fromStdin) {
    const token = (await text(process.stdin)).trim();
    if (!token)
      throw new UsageError('standard input held no token', {
        hint: 'pipe it in: printf %s "$TOKEN" | jit login --token-stdin --broker URL',
      });
    return token;
  }
  if (noPrompt || !process.stdin.isTTY) {
    throw new UsageError('no token given and no terminal to prompt on (or CI is set)', { hint: 'pipe it in with --token-stdin' });
  }
  const { password } = await import('@inquirer/prompts');
  return (await password({ message: 'API token', mask: true }, { output: process.stderr })).trim();
}
