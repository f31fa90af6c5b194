import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { LocalConfig, LocalGrant, Wrapper } from '../config/local.ts';
import { NotFoundError } from '../core/errors.ts';
import type { RevocationReceipt } from '../core/grant.ts';
import { accounts, type SecretStore } from '../secrets/store.ts';
import type { BrokerClient } from './broker-client.ts';

type ReleaseDeps = { client: BrokerClient; config: LocalConfig; secrets: SecretStore | undefined };

/**
 * Revokes a grant on the broker and forgets it locally: keychain entry and index entry. The one
 * cleanup used by `jit run` on every way out, by `jit revoke`, and by the leftover reaper.
 * Idempotent: a grant the broker has already ended counts as released. A grant this machine
 * indexes but the broker does not know is forgotten with state "unknown", never reported revoked.
 * Throws (leaving the index entry) when the broker could not be asked.
 */
export async function releaseGrant(id: string, deps: ReleaseDeps): Promise<RevocationReceipt> {
  let receipt: RevocationReceipt;
  try {
    receipt = await deps.client.revokeGrant(id);
  } catch (error) {
    if (!(error instanceof NotFoundError) || !deps.config.grant(id)) throw error;
    receipt = { id, state: 'unknown', revokedAt: null, alreadyEnded: true, actions: [] };
  }
  await forgetGrant(id, deps);
  return receipt;
}

/**
 * releaseGrant, or, when the broker cannot be reached, the next best thing: the credential leaves
 * the keychain now and the index keeps the grant as revoke-pending for the next jit to finish.
 */
export async function releaseOrDefer(id: string, deps: ReleaseDeps): Promise<{ receipt: RevocationReceipt } | { error: Error }> {
  try {
    return { receipt: await releaseGrant(id, deps) };
  } catch (error) {
    await deps.secrets?.delete(accounts.grant(id)).catch(() => false);
    const local = deps.config.grant(id);
    if (local) deps.config.putGrant({ ...local, state: 'revoke-pending' });
    return { error: error instanceof Error ? error : new Error(String(error)) };
  }
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

function readOr(file: string, fallback: string): string {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    return fallback;
  }
}

/** When the process started, in clock ticks since boot (Linux); 0 where that cannot be read. */
function startTicks(pid: number): number {
  const stat = readOr(`/proc/${pid}/stat`, '');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? 0) || 0;
}

/** This process, as the local index records the wrapper of a grant. */
export function currentWrapper(): Wrapper {
  return {
    pid: process.pid,
    host: os.hostname(),
    bootId: readOr('/proc/sys/kernel/random/boot_id', ''),
    startTicks: startTicks(process.pid),
  };
}

/**
 * Whether the `jit run` that held a grant is certainly gone. A config directory shared between
 * machines (an NFS home) holds other hosts' grants: those are never judged from here, and lapse
 * on their broker if their wrapper died. A reused pid is told apart by its start time.
 */
export function wrapperGone(grant: LocalGrant): boolean {
  // Held by no process (jit request): nothing to be gone. It ends by TTL, revoke or `jit run --grant`.
  if (grant.wrapper === null) return false;
  const here = currentWrapper();
  // An entry written before wrappers were recorded: judge it by its pid alone, on this host.
  const wrapper = (grant.wrapper as Wrapper | undefined) ?? { pid: grant.pid ?? 0, host: here.host, bootId: '', startTicks: 0 };
  if (wrapper.host !== here.host) return false;
  if (wrapper.bootId && here.bootId && wrapper.bootId !== here.bootId) return true;
  if (!processAlive(wrapper.pid)) return true;
  return wrapper.startTicks !== 0 && startTicks(wrapper.pid) !== wrapper.startTicks;
}
