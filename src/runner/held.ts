import type { SecretStore } from '../secrets/store.ts';
import { accounts } from '../secrets/store.ts';

/** What the keychain keeps for a grant: its credential and the environment a job gets with it. */
export type HeldCredential = { credential: string; env: Record<string, string> };

/** Keeps a grant's credential (and the job environment built from it) in the keychain, as one entry. */
export async function keepCredential(secrets: SecretStore, grantId: string, held: HeldCredential): Promise<void> {
  await secrets.set(accounts.grant(grantId), JSON.stringify(held));
}

/** The credential kept for a grant, or undefined when this machine holds none. */
export async function heldCredential(secrets: SecretStore, grantId: string): Promise<HeldCredential | undefined> {
  const stored = await secrets.get(accounts.grant(grantId));
  if (stored === undefined) return undefined;
  try {
    const parsed = JSON.parse(stored) as HeldCredential;
    if (typeof parsed.credential === 'string' && parsed.env && typeof parsed.env === 'object') return parsed;
  } catch {
    // An entry from before environments were kept: the bare credential, with no environment to give.
  }
  return undefined;
}
