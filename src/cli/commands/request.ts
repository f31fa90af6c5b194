import { describeApproval } from '../../core/approval.ts';
import { PendingError } from '../../core/errors.ts';
import type { GrantView } from '../../core/grant.ts';
import { waitForApproval } from '../../runner/wait.ts';
import type { CommandDefinition } from '../command.ts';
import { refuseUnheldWithOidc, requestedTtlSeconds, requestUnheld, waitTimeoutMs } from '../unheld.ts';

const collect = (value: string, previous: string[] = []) => [...previous, value];

export const request: CommandDefinition = {
  path: 'request',
  summary: 'request a grant without running anything (ahead of a job, or for approval); prints its id',
  define: (command) =>
    command
      .requiredOption('-s, --scope <scope>', 'what the job will need, e.g. datasets/train (repeatable)', collect)
      .option('--ttl <duration>', 'how long the grant may live once active, e.g. 2h (default: the policy default)')
      .option('--reason <text>', 'why, shown to approvers and recorded in the audit trail')
      .option('--wait', 'if it needs approval, wait for the decision (exit 0 approved, 4 denied, 9 still pending)')
      .option('--wait-timeout <duration>', 'with --wait: give up waiting after this long (the request stays pending)'),
  async handler({ options }, ctx) {
    // Flags are checked before anything is requested: a bad one leaves no grant behind.
    refuseUnheldWithOidc(ctx, 'jit request');
    const timeoutMs = waitTimeoutMs(options.waitTimeout);
    const { issued, entry, client, release } = await requestUnheld(ctx, {
      scopes: options.scope as string[],
      ttlSeconds: requestedTtlSeconds(ctx, options.ttl),
      reason: options.reason,
      command: '(jit request)',
    });
    const { credential: _credential, env: _env, ...view } = issued;

    let grant: GrantView = view;
    if (grant.state === 'pending' && options.wait) {
      try {
        grant = await waitForApproval(ctx, grant, {
          poll: () => client.getGrant(issued.id),
          intervalMs: 2_000,
          timeoutMs,
          timeoutHint: `it stays pending: ask ${describeApproval(grant)} to review it (\`jit approve ${grant.id}\`), then \`jit run --grant ${grant.id} -- COMMAND\``,
        });
      } catch (error) {
        // Denied or timed out on the broker: nothing left to hold. Our own wait running out leaves it pending.
        if (!(error instanceof PendingError && error.code === 'approval_wait_timeout')) await release();
        throw error;
      }
      ctx.config.putGrant({ ...entry, state: 'active', expiresAt: grant.expiresAt });
    }
    const human =
      grant.state === 'pending'
        ? `${grant.id} is pending: it needs approval by ${describeApproval(grant)} (times out ${grant.approval?.deadline ?? '-'}).\nOnce approved, run the job with: jit run --grant ${grant.id} -- COMMAND`
        : `${grant.id} is active for ${grant.scopes.join(', ')} until ${grant.expiresAt}.\nRun the job with: jit run --grant ${grant.id} -- COMMAND`;
    return { data: grant, human };
  },
};
