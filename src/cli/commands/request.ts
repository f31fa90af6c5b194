import { forgetGrant } from '../../client/release.ts';
import { describeApproval } from '../../core/approval.ts';
import { parseDuration } from '../../core/duration.ts';
import { PendingError } from '../../core/errors.ts';
import type { GrantView } from '../../core/grant.ts';
import { formatScope, parseScope } from '../../core/scope.ts';
import { keepCredential } from '../../runner/held.ts';
import { waitForApproval } from '../../runner/wait.ts';
import type { CommandDefinition } from '../command.ts';

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
    const scopes = (options.scope as string[]).map((text) => formatScope(parseScope(text)));
    // As `jit run`: --ttl, else the profile's default TTL (`jit config set --default-ttl`), else the policy's.
    const ttl = options.ttl === undefined ? ctx.config.profile(ctx.options.profile)?.defaultTtl : String(options.ttl);
    const ttlSeconds = ttl === undefined ? undefined : parseDuration(ttl, '--ttl');
    const waitTimeoutMs =
      options.waitTimeout === undefined ? undefined : parseDuration(String(options.waitTimeout), '--wait-timeout') * 1000;
    const { client, profile, brokerUrl, auth } = await ctx.session();
    const secrets = await ctx.secrets();
    // No process holds it: its heartbeat clock starts when `jit run --grant` picks it up.
    const issued = await client.requestGrant({
      scopes,
      ttlSeconds,
      reason: options.reason === undefined ? undefined : String(options.reason),
      heartbeat: false,
    });
    const { credential, env, ...view } = issued;
    const entry = {
      id: issued.id,
      profile,
      brokerUrl,
      auth,
      scopes: issued.scopes,
      pid: null,
      wrapper: null,
      command: '(jit request)',
      createdAt: issued.createdAt,
      expiresAt: issued.expiresAt,
      approvalDeadline: issued.approval?.deadline ?? null,
      state: issued.state === 'pending' ? ('pending' as const) : ('active' as const),
    };
    ctx.config.putGrant(entry);
    await keepCredential(secrets, issued.id, { credential, env });

    let grant: GrantView = view;
    if (grant.state === 'pending' && options.wait) {
      try {
        grant = await waitForApproval(ctx, grant, {
          poll: () => client.getGrant(issued.id),
          intervalMs: 2_000,
          timeoutMs: waitTimeoutMs,
          timeoutHint: `it stays pending: ask ${describeApproval(grant)} to review it (\`jit approve ${grant.id}\`), then \`jit run --grant ${grant.id} -- COMMAND\``,
        });
      } catch (error) {
        // Denied or timed out on the broker: nothing left to hold. Our own wait running out leaves it pending.
        if (!(error instanceof PendingError && error.code === 'approval_wait_timeout'))
          await forgetGrant(issued.id, { config: ctx.config, secrets });
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
