import { text } from 'node:stream/consumers';
import { BrokerClient } from '../../client/broker-client.ts';
import { describeSource, oidcSource } from '../../client/oidc.ts';
import { KeychainError, UsageError } from '../../core/errors.ts';
import { canonicalUrl } from '../../core/url.ts';
import { accounts } from '../../secrets/store.ts';
import type { CommandDefinition, CommandResult } from '../command.ts';
import type { Context } from '../context.ts';

export const login: CommandDefinition = {
  path: 'login',
  summary: "verify an API token with a broker and keep it in the OS keychain (--oidc: check the CI job's OIDC identity instead)",
  define: (command) =>
    command
      .option('--broker <url>', 'the broker URL, e.g. https://jit.example.com (asked for on a terminal when there is none)')
      .option('--token-stdin', 'read the token from standard input instead of prompting for it')
      .option('--oidc', "exchange the CI job's OIDC identity token for a session and show who it is; nothing is stored"),
  async handler({ options }, ctx) {
    const given = options.broker ?? ctx.options.broker ?? ctx.env.JIT_BROKER_URL ?? ctx.config.profile(ctx.options.profile)?.brokerUrl;
    const brokerUrl = canonicalUrl(String(given ?? (await askBrokerUrl(ctx.interactive))));
    if (!/^https?:\/\/[^/]+/.test(brokerUrl))
      throw new UsageError(`"${brokerUrl}" is not an http(s) URL`, { hint: 'e.g. --broker http://127.0.0.1:8420' });
    if (options.oidc) return loginOidc(ctx, brokerUrl);
    const token = await readToken(Boolean(options.tokenStdin), !ctx.interactive);
    const secrets = await ctx.secrets();
    if (secrets.backend === 'memory') {
      throw new KeychainError('no OS keychain to keep the token in', {
        hint: 'set JIT_BROKER_URL and JIT_TOKEN instead (for CI), or see docs/keychain.md',
      });
    }
    const { subject } = await ctx.out.during(`checking the token with ${brokerUrl}`, () => new BrokerClient({ brokerUrl, token }).whoami());
    await secrets.set(accounts.token(ctx.options.profile), token);
    ctx.config.setProfile(ctx.options.profile, { ...ctx.config.profile(ctx.options.profile), brokerUrl });
    const data = { profile: ctx.options.profile, brokerUrl, subject, keychain: secrets.backend };
    return {
      data,
      human: `Logged in to ${brokerUrl} as ${subject} (profile ${data.profile}; token kept in the OS keychain via ${secrets.backend}).`,
    };
  },
};

/** The broker URL from a person at a terminal; elsewhere (a pipe, CI, --json) the error names the flag. */
async function askBrokerUrl(interactive: boolean): Promise<string> {
  if (!interactive) {
    throw new UsageError('no broker URL given, and no terminal to ask on (or CI is set)', {
      hint: 'pass --broker URL (or set JIT_BROKER_URL)',
    });
  }
  const { input } = await import('@inquirer/prompts');
  const answer = await input(
    {
      message: 'Broker URL',
      validate: (text) => /^https?:\/\/[^/\s]+\S*$/.test(text.trim()) || 'an http(s) URL, e.g. https://jit.example.com',
    },
    { output: process.stderr },
  );
  return answer.trim();
}

/**
 * `jit login --oidc`: exchanges the CI job's identity token (JIT_OIDC_TOKEN, JIT_OIDC_TOKEN_FILE
 * or GitHub Actions' request) and shows the subject the broker maps it to. Nothing goes to the
 * keychain or the config: every later jit command in the job exchanges by itself.
 */
async function loginOidc(ctx: Context, brokerUrl: string): Promise<CommandResult> {
  const source = oidcSource(ctx.env);
  if (!source) {
    throw new UsageError('no CI identity token in this environment', {
      hint: 'set JIT_OIDC_TOKEN or JIT_OIDC_TOKEN_FILE, or run in GitHub Actions with `permissions: id-token: write` (docs/ci.md#oidc)',
    });
  }
  const session = await ctx.oidcSession(brokerUrl);
  if (!session) throw new UsageError('no CI identity token in this environment');
  const data = {
    brokerUrl,
    source,
    subject: session.subject,
    issuer: session.issuer,
    roles: session.roles,
    sessionId: session.sessionId,
    expiresAt: session.expiresAt,
    stored: false,
  };
  return {
    data,
    human: `CI identity from ${describeSource(source)} accepted by ${brokerUrl} as ${session.subject} (issuer ${session.issuer}; session ${session.sessionId} until ${session.expiresAt}). Nothing was stored: jit run and jit env exchange by themselves in this job.`,
  };
}

async function readToken(fromStdin: boolean, noPrompt: boolean): Promise<string> {
  if (fromStdin) {
    const token = (await text(process.stdin)).trim();
    if (!token)
      throw new UsageError('standard input held no token', {
        hint: 'pipe it in: printf %s "$TOKEN" | jit login --token-stdin --broker URL',
      });
    return token;
  }
  if (noPrompt) {
    throw new UsageError('no token given and no terminal to prompt on (or CI is set)', { hint: 'pipe it in with --token-stdin' });
  }
  const { password } = await import('@inquirer/prompts');
  return (await password({ message: 'API token', mask: true }, { output: process.stderr })).trim();
}
