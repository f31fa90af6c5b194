import type { LocalConfig } from '../config/local.ts';
import { NotFoundError } from '../core/errors.ts';
import type { RevocationReceipt } from '../core/grant.ts';
import { accounts, type SecretStore } from '../secrets/store.ts';
import type { BrokerClient } from './broker-client.ts';

/**
 * Revokes a grant on the broker and forgets it locally: keychain entry and index entry. The one
 * cleanup used by `jit run` on every way out, by `jit revoke`, and by the leftover reaper.
 * Idempotent: a grant the broker has already ended counts as released, and so does one in the
 * local index that the broker no longer knows.
 * Throws (leaving the index entry) only when the broker could not be asked.
 */
export async function releaseGrant(
  id: string,
  deps: { client: BrokerClient; config: LocalConfig; secrets: SecretStore | undefined },
): Promise<RevocationReceipt> {
  let receipt: RevocationReceipt;
  try {
    receipt = await deps.client.revokeGrant(id);
  } catch (error) {
    // A grant this machine still indexes but the broker no longer knows is gone all the same.
    if (!(error instanceof NotFoundError) || !deps.config.grant(id)) throw error;
    receipt = { id, state: 'revoked', revokedAt: null, alreadyEnded: true, actions: [] };
  }
  await forgetGrant(id, deps);
  return receipt;
}

/** Removes what this machine holds for a grant; safe to call twice. */
export async function forgetGrant(id: string, deps: { config: LocalConfig; secrets: SecretStore | undefined }): Promise<void> {
  await deps.secrets?.delete(accounts.grant(id)).catch(() => false);
  deps.config.removeGrant(id);
}

/** True while a process with this pid exists (EPERM means it exists but is not ours). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
