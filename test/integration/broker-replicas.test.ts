import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type RunningBroker, startBroker } from '../../src/broker/broker.ts';
import { PostgresStore } from '../../src/broker/store/postgres.ts';
import { readEvents } from '../../src/client/sse.ts';
import type { AuditRecord, VerifyReport } from '../../src/core/audit.ts';
import type { GrantView, IssuedGrant, RevocationReceipt } from '../../src/core/grant.ts';
import { api, readGranted, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { postgresSkipReason } from '../helpers/postgres.ts';

const FILE = 'datasets/train/shard-0000.jsonl';

/**
 * The broker on PostgreSQL, and three replicas sharing one database with nothing else in common:
 * each has its own listener, sweeper and memory, so only the database can make them agree.
 */
describe('broker replicas on one PostgreSQL', { skip: await postgresSkipReason() }, () => {
  let a: TestBroker;
  let b: RunningBroker;
  let c: RunningBroker;
  let store: PostgresStore;
  // One clock for the three replicas, so a test can make grants due on all of them at once.
  let skewMs = 0;
  const clock = { now: () => Date.now() + skewMs };

  before(async () => {
    a = await startTestBroker({ store: 'postgres', heartbeatTimeout: '2s', clock });
    b = await startBroker({ dir: a.dir, host: '127.0.0.1', port: 0, clock });
    c = await startBroker({ dir: a.dir, host: '127.0.0.1', port: 0, clock });
    store = await PostgresStore.open(a.database?.url ?? '', { maxConnections: 1 });
  });
  after(async () => {
    await store?.close();
    await b?.close();
    await c?.close();
    await a?.cleanup();
  });

  const issue = async (via: { url: string }) => {
    const issued = await api<IssuedGrant>(via, a.token, 'POST', 'grants', { scopes: ['datasets/train'] });
    assert.equal(issued.status, 201);
    return issued.body;
  };

  const waitUntilExpired = async (grants: { id: string }[]) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const states = await Promise.all(grants.map(async (grant) => (await store.getGrant(grant.id))?.state));
      if (states.every((state) => state === 'expired')) return;
      assert.ok(Date.now() < deadline, `grants did not all expire: ${states.join(', ')}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  };

  it('runs the grant lifecycle with PostgreSQL as the store', async () => {
    const grant = await issue(a);
    const read = await readGranted(a.url, grant.credential, FILE);
    assert.equal(read.status, 200);
    assert.match(read.text, /capital of France/);
    const receipt = await api<RevocationReceipt>(a, a.token, 'DELETE', `grants/${grant.id}`);
    assert.equal(receipt.body.state, 'revoked');
    assert.equal(receipt.body.alreadyEnded, false);
    assert.equal((await readGranted(a.url, grant.credential, FILE)).status, 401);
    const types = (await store.listEvents({ grantId: grant.id })).map((event) => event.type);
    assert.deepEqual(types, ['grant.issued', 'data.read', 'grant.revoked', 'data.refused']);
  });

  it('serves a grant issued on one replica from another, and a revocation on one is refused by all at once', async () => {
    const grant = await issue(a);
    assert.equal((await readGranted(b.url, grant.credential, FILE)).status, 200);
    const listed = await api<{ grants: GrantView[] }>(c, a.token, 'GET', 'grants');
    assert.ok(listed.body.grants.some((view) => view.id === grant.id && view.state === 'active'));
    const receipt = await api<RevocationReceipt>(a, a.token, 'DELETE', `grants/${grant.id}`);
    assert.equal(receipt.body.state, 'revoked');
    // No waiting: the data plane reads the store on every request.
    const [viaB, viaC] = await Promise.all([readGranted(b.url, grant.credential, FILE), readGranted(c.url, grant.credential, FILE)]);
    assert.equal(viaB.status, 401);
    assert.equal(viaC.status, 401);
    const again = await api<RevocationReceipt>(c, a.token, 'DELETE', `grants/${grant.id}`);
    assert.equal(again.body.alreadyEnded, true);
  });

  it('expires a lapsed grant exactly once although all three replicas sweep', async () => {
    const grants = await Promise.all([a, b, c, a, b, c, a, b, c].map((replica) => issue(replica)));
    // heartbeatTimeout 2s, sweepInterval 1s: wait for every grant to lapse, then for a few more
    // sweeps on every replica, so that a replica that expired a grant again would have done so.
    await waitUntilExpired(grants);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    for (const grant of grants) {
      const expired = (await store.listEvents({ grantId: grant.id })).filter((event) => event.type === 'grant.expired');
      assert.equal(expired.length, 1, `grant ${grant.id} has ${expired.length} grant.expired events`);
      assert.deepEqual(expired[0]?.detail, { reason: 'heartbeat', by: 'system' });
      assert.equal((await readGranted(c.url, grant.credential, FILE)).status, 401);
    }
  });

  it('ends each due grant once when the three replicas sweep at the same moment', async () => {
    const grants = await Promise.all(Array.from({ length: 60 }, (_, index) => issue([a, b, c][index % 3] ?? a)));
    // Every grant becomes due at once on all three clocks; then all three sweep together (their
    // interval sweepers may join in too).
    skewMs += 60_000;
    const ended = await Promise.all([a.broker.grants.sweep(), b.grants.sweep(), c.grants.sweep()]);
    assert.ok(ended.reduce((sum, count) => sum + count, 0) <= grants.length, `the sweeps ended ${ended.join(' + ')} grants`);
    // A sweep already under way when the clock jumped is the one a call joins; the next ones end the rest.
    await waitUntilExpired(grants);
    const events = await store.listEvents({});
    for (const grant of grants) {
      const expired = events.filter((event) => event.grantId === grant.id && event.type === 'grant.expired');
      assert.equal(expired.length, 1, `grant ${grant.id} has ${expired.length} grant.expired events`);
    }
  });

  it('seals what all replicas append into one chain, and streams every record from any replica', async () => {
    const stop = new AbortController();
    const response = await fetch(`${c.url}/v1/audit/stream`, { headers: { authorization: `Bearer ${a.token}` }, signal: stop.signal });
    assert.equal(response.status, 200);
    assert.ok(response.body);
    const seen: AuditRecord[] = [];
    const reading = (async () => {
      for await (const event of readEvents(response.body as ReadableStream<Uint8Array>)) {
        if (event.event === 'audit') seen.push(JSON.parse(event.data) as AuditRecord);
      }
    })().catch(() => undefined);
    const grants = await Promise.all([...Array.from({ length: 8 }, () => issue(a)), ...Array.from({ length: 8 }, () => issue(b))]);
    await Promise.all(grants.map((grant, index) => api(index % 2 === 0 ? b : a, a.token, 'DELETE', `grants/${grant.id}`)));
    const deadline = Date.now() + 10_000;
    const revoked = () => new Set(seen.filter((record) => record.action === 'grant.revoked').map((record) => record.grant));
    while (grants.some((grant) => !revoked().has(grant.id)) && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 50));
    stop.abort();
    await reading;
    for (const grant of grants) assert.ok(revoked().has(grant.id), `replica C streamed the revocation of ${grant.id}`);
    const seqs = seen.map((record) => record.seq);
    assert.deepEqual(
      seqs,
      seqs.map((_, index) => (seqs[0] ?? 0) + index),
      'one gap-free chain, streamed in order',
    );
    const report = (await api<VerifyReport>(b, a.token, 'GET', 'audit/verify')).body;
    assert.equal(report.ok, true, report.problem?.message);
    assert.ok(report.records >= (seqs.at(-1) ?? 0));
  });
});
