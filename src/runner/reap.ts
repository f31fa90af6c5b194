import type { Context } from '../cli/context.ts';
import { releaseOrDefer, wrapperGone } from '../client/release.ts';
import type { LocalGrant } from '../config/local.ts';

const REAP_TIMEOUT_MS = 2_000;

/**
 * An unheld grant (jit request, jit run --no-wait) a minute past its expiry, or still pending
 * here a minute past its approval deadline: the broker has ended it; forget it here.
 */
function outlived(grant: LocalGrant): boolean {
  if (grant.wrapper !== null) return false;
  const end = grant.state === 'pending' ? grant.approvalDeadline : grant.expiresAt;
  return typeof end === 'string' && Date.parse(end) < Date.now() - 60_000;
}

/** Why a grant in the index is a leftover to reap (as `jit doctor` says it), or undefined when it is not one. */
export function leftoverReason(grant: LocalGrant): string | undefined {
  if (grant.state === 'revoke-pending') return 'revoke-pending';
  if (wrapperGone(grant)) return 'its jit run is gone';
  if (outlived(grant)) return 'ended on the broker';
  return undefined;
}

/**
 * Finishes what earlier `jit run`s could not: grants left `revoke-pending` (the broker was down
 * at exit) and grants whose wrapper died without cleaning up (SIGKILL, power loss). Runs at the
 * start of every jit command; quick and quiet, and a broker that is still down leaves the entry
 * for next time.
 */
export async function reapLeftovers(ctx: Context): Promise<void> {
  const leftovers = ctx.config.grants().filter((grant) => leftoverReason(grant) !== undefined);
  if (leftovers.length === 0) return;
  const secrets = await ctx.secrets();
  for (const grant of leftovers) {
    const client = await ctx.clientForGrant(grant, { timeoutMs: REAP_TIMEOUT_MS, retries: 0 });
    const outcome = await releaseOrDefer(grant.id, { client, config: ctx.config, secrets });
    if ('error' in outcome) ctx.out.info(`grant ${grant.id} is still revoke-pending: ${outcome.error.message}`);
    else if (grant.wrapper === null) ctx.out.info(`forgot grant ${grant.id} (${grant.command}), which has ended: ${outcome.receipt.state}`);
    else ctx.out.info(`cleaned up grant ${grant.id} left by an earlier jit run (pid ${grant.pid}): now ${outcome.receipt.state}`);
  }
}
