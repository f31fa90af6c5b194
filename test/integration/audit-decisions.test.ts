import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { initialConfigYaml, parseBrokerConfig } from '../../src/broker/config.ts';
import { GrantService } from '../../src/broker/grants/service.ts';
import { SqliteStore } from '../../src/broker/store/sqlite.ts';

describe('every decision is on the audit trail', () => {
  let dir: string;
  let store: SqliteStore;
  let grants: GrantService;
  let skew = 0;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'jit-audit-'));
    const config = parseBrokerConfig(initialConfigYaml('user:admin'), path.join(dir, 'broker.yaml'));
    store = new SqliteStore(path.join(dir, 'broker.db'));
    grants = new GrantService({ config, store, clock: { now: () => Date.now() + skew }, publicUrl: () => 'http://127.0.0.1:1' });
  });
  after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const refused: [string, { scopes: string[]; ttlSeconds?: number }, string][] = [
    ['a scope no rule allows', { scopes: ['datasets/train'], ttlSeconds: 60 }, 'policy_denied'],
    ['an unknown resource', { scopes: ['warehouse/x'] }, 'unknown_resource'],
    ['a TTL over the maximum', { scopes: ['datasets/train'], ttlSeconds: 9 * 3600 }, 'ttl_too_long'],
  ];
  for (const [what, request, code] of refused) {
    it(`records a refused request (${what}) with what was asked and why`, async () => {
      const subject = code === 'policy_denied' ? 'user:mallory' : 'user:admin';
      await assert.rejects(
        grants.request(subject, { ...request, reason: 'audit test' }),
        (error: Error & { code?: string }) => error.code === code,
      );
      const events = (await store.listEvents({})).filter((event) => event.type === 'grant.refused');
      const last = events.at(-1);
      assert.equal(last?.subject, subject);
      assert.equal(last?.grantId, null);
      assert.deepEqual(last?.detail.scopes, request.scopes);
      assert.equal(last?.detail.code, code);
      assert.equal(last?.detail.reason, 'audit test');
    });
  }

  it('records an issued grant and its event together', async () => {
    const issued = await grants.request('user:admin', { scopes: ['datasets/train'] });
    const events = await store.listEvents({ grantId: issued.id });
    assert.deepEqual(
      events.map((event) => event.type),
      ['grant.issued'],
    );
    assert.ok(!JSON.stringify(events).includes(issued.credential), 'no credential in the audit trail');
  });

  it('a revocation that finds the grant past its TTL reports and records it as expired', async () => {
    const issued = await grants.request('user:admin', { scopes: ['datasets/train'], ttlSeconds: 60 });
    skew = 61_000;
    try {
      const receipt = await grants.revoke('user:admin', issued.id);
      assert.equal(receipt.alreadyEnded, true);
      assert.equal(receipt.state, 'expired');
      const events = await store.listEvents({ grantId: issued.id });
      assert.deepEqual(
        events.map((event) => [event.type, event.detail.reason ?? null]),
        [
          ['grant.issued', null],
          ['grant.expired', 'ttl'],
        ],
      );
    } finally {
      skew = 0;
    }
  });
});
