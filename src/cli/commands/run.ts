import { parseDuration } from '../../core/duration.ts';
import { runUnderGrant } from '../../runner/run.ts';
import type { CommandDefinition } from '../command.ts';

const collect = (value: string, previous: string[] = []) => [...previous, value];

export const run: CommandDefinition = {
  path: 'run',
  summary: 'run a command with a just-in-time grant, revoked when it exits',
  define: (command) =>
    command
      .usage('--scope SCOPE [--scope SCOPE ...] [options] -- COMMAND [ARGS...]')
      .requiredOption('-s, --scope <scope>', 'what the job needs, e.g. datasets/train (repeatable)', collect)
      .option('--ttl <duration>', 'how long the grant may live, e.g. 30m, 2h (default: the policy default)')
      .option('--reason <text>', 'why, recorded in the audit trail')
      .option('--kill-after <duration>', 'grace period between relaying a signal and SIGKILL', '10s')
      .argument('[command...]', 'the command to run, after --')
      .passThroughOptions(),
  async handler({ args, options }, ctx) {
    const ttl = options.ttl === undefined ? ctx.config.profile(ctx.options.profile)?.defaultTtl : String(options.ttl);
    const exitCode = await runUnderGrant(ctx, {
      scopes: options.scope as string[],
      ttlSeconds: ttl === undefined ? undefined : parseDuration(ttl, '--ttl'),
      reason: options.reason === undefined ? undefined : String(options.reason),
      command: args,
      killAfterMs: parseDuration(String(options.killAfter), '--kill-after') * 1000,
    });
    return { exitCode };
  },
};
