import type { Context } from '../cli/context.ts';
import { releaseOrDefer, wrapperGone } from '../client/release.ts';

const REAP_TIMEOUT_MS = 2_000;

/**
 * Finishes what earlier `jit run`s could not: grants left `revoke-pending` (the broker was down
 * at exit) and grants whose wrapper died without cleaning up (SIGKILL, power loss). Runs at the
 * start of every jit command; quick and quiet, and a broker that is still down leaves the entry
 * for next time.
 */
export async function reapLeftovers(ctx: Context): Promise<void> {
  const leftovers = ctx.config.grants().filter((grant) => grant.state === 'revoke-pending' || wrapperGone(grant));
  if (leftovers.length === 0) return;
  const secrets = await ctx.secrets();
  for (const grant of leftovers) {
    const client = await ctx.clientForGrant(grant, { timeoutMs: REAP_TIMEOUT_MS, retries: 0 });
    const outcome = await releaseOrDefer(grant.id, { client, config: ctx.config, secrets });
    if ('error' in outcome) ctx.out.info(`grant ${grant.id} is still revoke-pending: ${outcome.error.message}`);
    else ctx.out.info(`cleaned up grant ${grant.id} left by an earlier jit run (pid ${grant.pid}): now ${outcome.receipt.state}`);
  }
}
