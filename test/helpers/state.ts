import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { LocalGrant } from '../../src/config/local.ts';
import type { GrantView } from '../../src/core/grant.ts';
import { accounts, type SecretStore } from '../../src/secrets/store.ts';
import { api, readGranted, type TestBroker } from './broker.ts';

/**
 * What a `jit run` leaves in the three places a grant lives: the broker, the OS keychain and the
 * local index (JIT_CONFIG_DIR/config.json), read the way a user or an admin would.
 */
export type Places = { broker: TestBroker; env: NodeJS.ProcessEnv; keychain: SecretStore };

/** A file the granted scope (datasets/train) covers, to prove a credential works. */
export const GRANTED_FILE = 'datasets/train/shard-0000.jsonl';

export function indexFile(env: NodeJS.ProcessEnv): string {
  assert.ok(env.JIT_CONFIG_DIR, 'testEnv sets JIT_CONFIG_DIR');
  return path.join(env.JIT_CONFIG_DIR, 'config.json');
}

/** The local index's grants by id; empty when jit never wrote the file. */
export async function localGrants(env: NodeJS.ProcessEnv): Promise<Record<string, LocalGrant>> {
  let text: string;
  try {
    text = await readFile(indexFile(env), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw error;
  }
  return (JSON.parse(text) as { grants?: Record<string, LocalGrant> }).grants ?? {};
}

/** Every grant the broker holds for the test's admin, as `GET /v1/grants` lists them. */
export async function brokerGrants(broker: TestBroker): Promise<GrantView[]> {
  const { status, body } = await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants');
  assert.equal(status, 200);
  return body.grants;
}

export async function brokerGrant(broker: TestBroker, id: string): Promise<GrantView> {
  const { status, body } = await api<GrantView>(broker, broker.token, 'GET', `grants/${id}`);
  assert.equal(status, 200, `the broker knows grant ${id}`);
  return body;
}

/** Polls until `check` yields a value (not undefined), failing with `what` after the deadline. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Asserts a grant is live in all three places while its job runs: active on the broker, its
 * credential in the keychain (and that credential reads the granted data), and indexed under the
 * pid of the jit that holds it. Returns the credential.
 */
export async function assertHeld({ broker, env, keychain }: Places, grantId: string, jitPid: number | undefined): Promise<string> {
  assert.equal((await brokerGrant(broker, grantId)).state, 'active');
  const stored = await keychain.get(accounts.grant(grantId));
  assert.ok(stored, `keychain entry ${accounts.grant(grantId)} exists while the job runs`);
  // The entry is { credential, env } as JSON (src/runner/held.ts).
  const { credential } = JSON.parse(stored) as { credential: string };
  assert.equal((await readGranted(broker.url, credential, GRANTED_FILE)).status, 200, 'the keychain holds the live credential');
  const local = (await localGrants(env))[grantId];
  assert.ok(local, 'the local index lists the grant while the job runs');
  assert.equal(local.state, 'active');
  assert.equal(local.pid, jitPid);
  return credential;
}

/** Asserts nothing of a grant is left: ended on the broker (`state`), no keychain entry, no index entry. */
export async function assertReleased({ broker, env, keychain }: Places, grantId: string, state = 'revoked'): Promise<void> {
  assert.equal((await brokerGrant(broker, grantId)).state, state);
  assert.equal(await keychain.get(accounts.grant(grantId)), undefined, `keychain entry ${accounts.grant(grantId)} is gone`);
  assert.deepEqual(Object.keys(await localGrants(env)), [], 'the local index is empty');
}

/** The one grant a test's broker has issued (tests that never see the id, e.g. a failed spawn). */
export async function onlyGrant(broker: TestBroker): Promise<GrantView> {
  const grants = await brokerGrants(broker);
  assert.equal(grants.length, 1, `exactly one grant was issued: ${JSON.stringify(grants)}`);
  return grants[0] as GrantView;
}
