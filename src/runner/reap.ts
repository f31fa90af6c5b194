import type { Context } from '../cli/context.ts';
import { processAlive, releaseGrant } from '../client/release.ts';

const REAP_TIMEOUT_MS = 2_000;

/**
 * Finishes what earlier `jit run`s could not: grants left `revoke-pending` (the broker was down
 * at exit) and grants whose wrapper died without cleaning up (SIGKILL, power loss). Runs at the
 * start of every jit command; quick and quiet, and a broker that is still down leaves the entry
 * for next time.
 */
export async function reapLeftovers(ctx: Context): Promise<void> {
  const leftovers = ctx.config.grants().filter((grant) => grant.state === 'revoke-pending' || !processAlive(grant.pid));
  if (leftovers.length === 0) return;
  const secrets = await ctx.secrets();
  for (const grant of leftovers) {
    try {
      const client = await ctx.clientFor(grant.brokerUrl, grant.profile, { timeoutMs: REAP_TIMEOUT_MS, retries: 0 });
      await releaseGrant(grant.id, { client, config: ctx.config, secrets });
      ctx.out.info(`finished revoking grant ${grant.id}, left by an earlier jit run (pid ${grant.pid})`);
    } catch (error) {
      ctx.config.putGrant({ ...grant, state: 'revoke-pending' });
      ctx.out.info(`grant ${grant.id} is still revoke-pending: ${(error as Error).message}`);
    }
  }
}
