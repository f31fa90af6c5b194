import { parseDuration } from '../../core/duration.ts';
import { runUnderGrant } from '../../runner/run.ts';
import type { CommandDefinition } from '../command.ts';
import { refuseUnheldWithOidc, requestedTtlSeconds, waitTimeoutMs } from '../unheld.ts';

const collect = (value: string, previous: string[] = []) => [...previous, value];

export const run: CommandDefinition = {
  path: 'run',
  summary: 'run a command with a just-in-time grant, revoked when it exits',
  define: (command) =>
    command
      .usage('--scope SCOPE [--scope SCOPE ...] [options] -- COMMAND [ARGS...]\n       jit run --grant ID [options] -- COMMAND [ARGS...]')
      .option('-s, --scope <scope>', 'what the job needs, e.g. datasets/train (repeatable)', collect)
      .option('--grant <id>', 'run under a grant from `jit request` (or an earlier `--no-wait`) instead of requesting one')
      .option('--ttl <duration>', 'how long the grant may live, e.g. 30m, 2h (default: the policy default)')
      .option('--reason <text>', 'why, recorded in the audit trail')
      .option('--no-wait', 'if the grant needs approval, exit 9 at once with its id instead of waiting')
      .option('--wait-timeout <duration>', 'give up waiting for approval after this long (exit 9), e.g. 15m')
      .option('--kill-after <duration>', 'grace period between relaying a signal and SIGKILL', '10s')
      .argument('[command...]', 'the command to run, after --')
      .passThroughOptions(),
  async handler({ args, options }, ctx) {
    if (options.wait === false) refuseUnheldWithOidc(ctx, 'jit run --no-wait');
    const exitCode = await runUnderGrant(ctx, {
      scopes: (options.scope as string[] | undefined) ?? [],
      grantId: options.grant === undefined ? undefined : String(options.grant),
      wait: options.wait !== false,
      waitTimeoutMs: waitTimeoutMs(options.waitTimeout),
      ttlSeconds: requestedTtlSeconds(ctx, options.ttl),
      reason: options.reason === undefined ? undefined : String(options.reason),
      command: args,
      killAfterMs: parseDuration(String(options.killAfter), '--kill-after') * 1000,
    });
    return { exitCode };
  },
};
