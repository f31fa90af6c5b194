import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type RunningBroker, startBroker } from '../../src/broker/broker.ts';
import { PostgresStore } from '../../src/broker/store/postgres.ts';
import { readEvents } from '../../src/client/sse.ts';
import type { AuditRecord, VerifyReport } from '../../src/core/audit.ts';
import type { GrantView, IssuedGrant, RevocationReceipt } from '../../src/core/grant.ts';
import { api, createToken, readGranted, startTestBroker, type TestBroker } from '../helpers/broker.ts';
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
    // trustedProxies: the alert tests give each request a client address through x-forwarded-for.
    a = await startTestBroker({ store: 'postgres', heartbeatTimeout: '2s', clock, trustedProxies: ['127.0.0.1'] });
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

  /** The replica that served a request seals its records now, before the others' interval sealers do (most likely). */
  const sealVia = async (replica: RunningBroker) => {
    await replica.audit.seal();
    const deadline = Date.now() + 10_000;
    while ((await store.unsealed()).count > 0) {
      assert.ok(Date.now() < deadline, 'the replicas seal what was appended');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  const from = (address: string) => ({ 'x-forwarded-for': address });

  it('raises one denied_burst for one subject’s denials spread over the replicas, each sealed by the replica that served it', async () => {
    const bo = await createToken(a, 'user:bo', ['requester']);
    const denials: number[] = [];
    for (const replica of [a.broker, b, c, a.broker, b, c, a.broker]) {
      assert.equal((await api(replica, bo, 'POST', 'grants', { scopes: ['datasets/train'] })).status, 403);
      await sealVia(replica);
      const [refused] = await store.queryAudit({
        subject: 'user:bo',
        action: 'grant.refused',
        afterPosition: denials.at(-1) ?? 0,
        limit: 1,
      });
      denials.push(refused?.position ?? 0);
    }
    await sealVia(a.broker);
    const alerts = await store.queryAudit({ subject: 'user:bo', action: 'alert.denied_burst', limit: 10 });
    assert.equal(alerts.length, 1, 'the 5th of 7 denials within the window completes one burst; the next two start a new count');
    assert.deepEqual(JSON.parse(alerts[0]?.detail ?? '{}'), { denials: 5, windowSeconds: 60, record: denials[4] });
  });

  it('raises one host_mismatch for a grant requested through one replica and used from other addresses through the others', async () => {
    const requested = await fetch(`${a.url}/v1/grants`, {
      method: 'POST',
      headers: { authorization: `Bearer ${a.token}`, 'content-type': 'application/json', ...from('10.9.0.1') },
      body: JSON.stringify({ scopes: ['datasets/train'] }),
    });
    assert.equal(requested.status, 201);
    const grant = (await requested.json()) as IssuedGrant;
    await sealVia(a.broker);
    for (const [replica, address] of [
      [b, '10.9.0.2'],
      [c, '10.9.0.3'],
      [b, '10.9.0.2'],
    ] as const) {
      const read = await fetch(`${replica.url}/v1/files/${FILE}`, {
        headers: { authorization: `Bearer ${grant.credential}`, ...from(address) },
      });
      assert.equal(read.status, 200);
      await sealVia(replica);
    }
    await sealVia(a.broker);
    const alerts = await store.queryAudit({ grantId: grant.id, action: 'alert.host_mismatch', limit: 10 });
    assert.equal(alerts.length, 1, 'once per grant, whichever replicas saw its uses');
    const reads = await store.queryAudit({ grantId: grant.id, action: 'data.read', limit: 10 });
    assert.deepEqual(JSON.parse(alerts[0]?.detail ?? '{}'), {
      requestedFrom: '10.9.0.1',
      usedFrom: '10.9.0.2',
      record: reads[0]?.position,
    });
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
