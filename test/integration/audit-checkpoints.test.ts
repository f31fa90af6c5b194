import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { signingKeyFromPem } from '../../src/broker/audit/chain.ts';
import { AuditLog } from '../../src/broker/audit/log.ts';
import { initBroker, startBroker } from '../../src/broker/broker.ts';
import { SqliteStore } from '../../src/broker/store/sqlite.ts';

/**
 * Checkpoints come every `checkpointEvery` records or `checkpointInterval`, whichever is first,
 * and quiet does not stop the second: a head left unsigned when activity stops is signed once the
 * interval has passed, without waiting for a new record.
 */
describe('audit checkpoints', () => {
  it('signs the head a quiet broker left unsigned once the interval has passed', async () => {
    const store = new SqliteStore(':memory:');
    let now = 1_800_000_000_000;
    const clock = { now: () => now };
    const { privateKey } = generateKeyPairSync('ed25519');
    const key = signingKeyFromPem(String(privateKey.export({ type: 'pkcs8', format: 'pem' })));
    const log = new AuditLog({ store, clock, key, checkpointEvery: 100, checkpointIntervalMs: 10_000 });
    const append = (count: number) =>
      store.appendEvents(
        Array.from({ length: count }, (_, index) => ({
          at: now,
          type: 'data.read',
          subject: 'user:ana',
          grantId: 'g1',
          detail: { index },
        })),
      );
    await append(3);
    await log.seal();
    assert.deepEqual(
      (await store.listCheckpoints()).map((checkpoint) => checkpoint.position),
      [3],
      'the first batch is signed at once',
    );
    now += 2_000;
    await append(4);
    await log.seal();
    assert.deepEqual(
      (await store.listCheckpoints()).map((checkpoint) => checkpoint.position),
      [3],
      'neither 100 records nor 10 s yet',
    );
    // Quiet: nothing new arrives, time passes.
    now += 9_000;
    await log.seal();
    assert.deepEqual(
      (await store.listCheckpoints()).map((checkpoint) => checkpoint.position),
      [3, 7],
      'the quiet head is signed',
    );
    now += 60_000;
    await log.seal();
    assert.deepEqual(
      (await store.listCheckpoints()).map((checkpoint) => checkpoint.position),
      [3, 7],
      'a signed head is not signed again',
    );
    assert.equal((await log.verify()).checkpoint?.position, 7);
    await store.close();
  });
});

describe('audit configuration at start', () => {
  it('refuses to start, in one line and with nothing left open, on a missing signing key or a bad trusted key', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'jit-audit-config-'));
    try {
      await initBroker(dir, 'admin');
      const configFile = path.join(dir, 'broker.yaml');
      const yaml = await readFile(configFile, 'utf8');
      await writeFile(configFile, `${yaml}\naudit:\n  signingKeyEnv: JIT_TEST_AUDIT_KEY_NOT_SET\n`);
      await assert.rejects(startBroker({ dir, host: '127.0.0.1', port: 0 }), {
        message: 'audit.signingKeyEnv names JIT_TEST_AUDIT_KEY_NOT_SET, which is not set',
      });
      await writeFile(path.join(dir, 'old.pub'), 'not a key\n');
      await writeFile(configFile, `${yaml}\naudit:\n  trustedKeys: [old.pub]\n`);
      await assert.rejects(startBroker({ dir, host: '127.0.0.1', port: 0 }), (error: Error) => {
        assert.match(error.message, /^audit\.trustedKeys file .*old\.pub is not a PEM public key/);
        return true;
      });
      // Nothing held the store open: it starts once the config is fixed.
      await writeFile(configFile, yaml);
      const broker = await startBroker({ dir, host: '127.0.0.1', port: 0 });
      await broker.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
