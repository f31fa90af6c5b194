import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { recordHash } from '../../src/broker/audit/chain.ts';
import type { AuditRecord } from '../../src/broker/audit/log.ts';
import type { VerifyReport } from '../../src/broker/audit/verify.ts';
import { readEvents } from '../../src/client/sse.ts';
import type { IssuedGrant } from '../../src/core/grant.ts';
import { api, createToken, readGranted, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { postgresSkipReason } from '../helpers/postgres.ts';
import { refuseAuditRecords, runOnStore } from '../helpers/store-sql.ts';

type Page = { records: AuditRecord[]; next: number | null };

const POLICY = `policy:
  rules:
    - name: train
      subjects: ["user:ana", "user:admin"]
      scopes: ["datasets/train/**"]
      defaultTtl: 1h
      maxTtl: 2h
`;

/** A webhook receiver that refuses its first `failures` deliveries (503), then keeps what it gets. */
async function startReceiver(
  failures: number,
): Promise<{ url: string; bodies: { headers: IncomingMessage['headers']; body: string }[]; server: Server }> {
  const bodies: { headers: IncomingMessage['headers']; body: string }[] = [];
  let refused = 0;
  const server = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => {
      body += chunk;
    });
    request.on('end', () => {
      if (refused < failures) {
        refused += 1;
        response.writeHead(503).end();
        return;
      }
      bodies.push({ headers: request.headers, body });
      response.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return { url: `http://127.0.0.1:${port}/hook`, bodies, server };
}

async function until<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * A client of GET /v1/audit/stream that remembers the last event id it saw (records' and cursor
 * events'), as a reconnecting EventSource or `jit watch` would, and reads with a deadline.
 */
async function openStream(url: string, token: string, query: string, lastEventId?: string) {
  const stop = new AbortController();
  const response = await fetch(`${url}/v1/audit/stream${query}`, {
    headers: { authorization: `Bearer ${token}`, ...(lastEventId === undefined ? {} : { 'last-event-id': lastEventId }) },
    signal: stop.signal,
  });
  assert.equal(response.status, 200);
  const events = readEvents(response.body as ReadableStream<Uint8Array>);
  const stream = {
    records: [] as AuditRecord[],
    lastId: undefined as string | undefined,
    /** Reads events until `done` holds (checked after each one); fails after `timeoutMs`. */
    async readUntil(what: string, done: () => boolean, timeoutMs = 10_000): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (!done()) {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), Math.max(0, deadline - Date.now()));
        });
        const next = await Promise.race([events.next(), timeout]).finally(() => clearTimeout(timer));
        if (next.done) throw new Error(`the stream ended while waiting for ${what}`);
        if (next.value.id !== undefined) stream.lastId = next.value.id;
        if (next.value.event === 'audit') stream.records.push(JSON.parse(next.value.data) as AuditRecord);
      }
    },
    /** Drops the connection, as a network blip or a closed laptop would. */
    async drop(): Promise<void> {
      stop.abort();
      await events.return(undefined).catch(() => undefined);
    },
  };
  return stream;
}

for (const store of ['sqlite', 'postgres'] as const) {
  const skip = store === 'postgres' ? await postgresSkipReason() : undefined;

  describe(`audit trail (${store})`, { skip }, () => {
    let broker: TestBroker;
    let receiver: Awaited<ReturnType<typeof startReceiver>>;
    const tokens: Record<string, string> = {};
    const as = <T>(who: string, method: string, route: string, body?: unknown) => api<T>(broker, tokens[who] ?? '', method, route, body);
    /** Runs SQL on the broker's store behind its back, as someone with database access would. */
    const tamper = (sql: string) => runOnStore(broker, sql);
    const verify = async () => (await as<VerifyReport>('auditor', 'GET', 'audit/verify')).body;

    before(async () => {
      receiver = await startReceiver(2);
      process.env.JIT_TEST_WEBHOOK_SECRET = 'whsec-test';
      broker = await startTestBroker({
        store,
        policy: POLICY,
        extraYaml: `audit:
  checkpointEvery: 5
  alerts: { deniedBurst: 3, deniedWindow: 60s }
  sinks:
    - name: archive
      type: file
      path: audit.jsonl
    - name: siem
      type: webhook
      url: ${receiver.url}
      secretEnv: JIT_TEST_WEBHOOK_SECRET
`,
      });
      tokens.admin = broker.token;
      tokens.ana = await createToken(broker, 'user:ana', ['requester']);
      tokens.bo = await createToken(broker, 'user:bo', ['requester']);
      tokens.auditor = await createToken(broker, 'user:aud', ['auditor']);
    });
    after(async () => {
      await broker.cleanup();
      receiver.server.close();
    });

    it('records a grant from request to revocation, with actor, scope and outcome, data touches included', async () => {
      const issued = (await as<IssuedGrant>('ana', 'POST', 'grants', { scopes: ['datasets/train'], reason: 'finetune' })).body;
      assert.equal((await readGranted(broker.url, issued.credential, 'datasets/train/shard-0000.jsonl')).status, 200);
      assert.equal((await as('ana', 'DELETE', `grants/${issued.id}`)).status, 200);
      // A revoked credential presented again: refused, recorded, and an alert.
      assert.equal((await readGranted(broker.url, issued.credential, 'datasets/train/shard-0000.jsonl')).status, 401);
      const page = (await as<Page>('auditor', 'GET', `audit?grant=${issued.id}`)).body;
      const actions = page.records.map((record) => record.action);
      assert.deepEqual(actions.slice(0, 4), ['grant.issued', 'data.read', 'grant.revoked', 'data.refused']);
      const [issuedRecord, read, revoked, refused] = page.records;
      assert.equal(issuedRecord?.actor, 'user:ana');
      assert.equal(issuedRecord?.scope, 'datasets/train');
      assert.equal(issuedRecord?.outcome, 'ok');
      assert.equal(read?.details.path, 'train/shard-0000.jsonl');
      assert.deepEqual(revoked?.details.actions, ['credential refused by the data plane', 'open transfers cut']);
      assert.equal(refused?.outcome, 'denied');
      const alert = await until('the ended-credential alert', async () => {
        const alerts = (await as<Page>('auditor', 'GET', `audit?grant=${issued.id}&action=alert.*`)).body.records;
        return alerts[0];
      });
      assert.equal(alert.action, 'alert.ended_credential_used');
      assert.equal(alert.outcome, 'alert');
      // No secret anywhere in the trail.
      const all = JSON.stringify((await as<Page>('auditor', 'GET', 'audit?limit=1000')).body);
      assert.ok(!all.includes(issued.credential), 'the credential is not in the trail');
      assert.ok(!all.includes(tokens.ana ?? ''), 'no token is in the trail');
    });

    it('does not issue or revoke a grant whose audit record cannot be written', async () => {
      const before = (await as<{ grants: unknown[] }>('ana', 'GET', 'grants')).body.grants.length;
      let unblock = await refuseAuditRecords(broker, ['grant.issued']);
      const refused = await as<{ code: string }>('ana', 'POST', 'grants', { scopes: ['datasets/train'] });
      await unblock();
      assert.equal(refused.status, 500);
      assert.equal((await as<{ grants: unknown[] }>('ana', 'GET', 'grants')).body.grants.length, before, 'no grant without its record');

      const issued = (await as<IssuedGrant>('ana', 'POST', 'grants', { scopes: ['datasets/train'] })).body;
      unblock = await refuseAuditRecords(broker, ['grant.revoked']);
      const revoke = await as('ana', 'DELETE', `grants/${issued.id}`);
      await unblock();
      assert.equal(revoke.status, 500);
      assert.equal(
        (await as<{ state: string }>('ana', 'GET', `grants/${issued.id}`)).body.state,
        'active',
        'not revoked without its record',
      );
      assert.equal((await as('ana', 'DELETE', `grants/${issued.id}`)).status, 200);
    });

    it('streams its resume point first, and moves it past records the filters skip, so a reconnect loses nothing', async () => {
      const stop = new AbortController();
      const response = await fetch(`${broker.url}/v1/audit/stream?grant=g_00000000000000000000`, {
        headers: { authorization: `Bearer ${tokens.auditor}` },
        signal: stop.signal,
      });
      assert.equal(response.status, 200);
      const events = readEvents(response.body as ReadableStream<Uint8Array>);
      const first = (await events.next()).value;
      assert.equal(first?.event, 'cursor');
      const start = Number(first?.id);
      assert.ok(start > 0, 'the current head');
      assert.equal((await as('ana', 'POST', 'grants', { scopes: ['datasets/train'] })).status, 201);
      const moved = (await events.next()).value;
      stop.abort();
      await events.return(undefined).catch(() => undefined);
      assert.equal(moved?.event, 'cursor', 'no record of another grant was sent');
      assert.ok(Number(moved?.id) > start, 'the resume point moved past the skipped records');
    });

    it('resumes a dropped stream at Last-Event-ID with exactly the records made meanwhile, none twice, none lost', async () => {
      const first = await openStream(broker.url, tokens.auditor ?? '', '');
      const a = (await as<IssuedGrant>('ana', 'POST', 'grants', { scopes: ['datasets/train'] })).body;
      await first.readUntil("grant a's record", () => first.records.some((record) => record.grant === a.id));
      await first.drop();
      const seen = first.records.map((record) => record.seq);
      const last = first.lastId;
      assert.equal(last, String(seen.at(-1)), 'the last id seen is the last record');

      // Made while no one was connected.
      const b = (await as<IssuedGrant>('ana', 'POST', 'grants', { scopes: ['datasets/train'] })).body;
      assert.equal((await as('ana', 'DELETE', `grants/${a.id}`)).status, 200);
      assert.equal((await as('ana', 'DELETE', `grants/${b.id}`)).status, 200);
      const missed = (await as<Page>('auditor', 'GET', `audit?after=${last}&limit=1000`)).body.records.map((record) => record.seq);
      assert.ok(missed.length >= 3, "b's issue and both revocations were made while disconnected");

      const second = await openStream(broker.url, tokens.auditor ?? '', '', last);
      await second.readUntil('the missed records', () => second.records.length >= missed.length);
      await second.drop();
      assert.deepEqual(
        second.records.map((record) => record.seq),
        missed,
        'exactly the missed records, in order',
      );
      assert.deepEqual(
        second.records.filter((record) => record.grant === a.id || record.grant === b.id).map((record) => record.action),
        ['grant.issued', 'grant.revoked', 'grant.revoked'],
      );
      const all = [...seen, ...second.records.map((record) => record.seq)];
      assert.equal(new Set(all).size, all.length, 'none twice');
      assert.deepEqual(
        all,
        Array.from({ length: all.length }, (_, index) => (all[0] ?? 0) + index),
        'none lost: one run of seqs across the reconnect',
      );
    });

    it('resumes a filtered stream after the records its filter skipped, without repeating or losing a match', async () => {
      const query = '?action=grant.revoked';
      const first = await openStream(broker.url, tokens.auditor ?? '', query);
      const a = (await as<IssuedGrant>('ana', 'POST', 'grants', { scopes: ['datasets/train'] })).body;
      assert.equal((await as('ana', 'DELETE', `grants/${a.id}`)).status, 200);
      await first.readUntil("a's revocation", () => first.records.some((record) => record.grant === a.id));
      // Then only records the filter skips: the cursor event carries the resume point past them.
      const b = (await as<IssuedGrant>('ana', 'POST', 'grants', { scopes: ['datasets/train'] })).body;
      const skipped = (await as<Page>('auditor', 'GET', `audit?grant=${b.id}`)).body.records[0]?.seq ?? 0;
      await first.readUntil('the cursor past the skipped record', () => Number(first.lastId) >= skipped);
      await first.drop();
      assert.deepEqual(
        first.records.map((record) => [record.action, record.grant]),
        [['grant.revoked', a.id]],
      );

      const c = (await as<IssuedGrant>('ana', 'POST', 'grants', { scopes: ['datasets/train'] })).body;
      assert.equal((await as('ana', 'DELETE', `grants/${c.id}`)).status, 200);
      assert.equal((await as('ana', 'DELETE', `grants/${b.id}`)).status, 200);
      const second = await openStream(broker.url, tokens.auditor ?? '', query, first.lastId);
      await second.readUntil("b's and c's revocations", () => second.records.length >= 2);
      // Anything more would be a repeat or a record the filter does not pass: give it a moment to show.
      await second.readUntil('nothing more', () => false, 500).catch(() => undefined);
      await second.drop();
      assert.deepEqual(
        second.records.map((record) => [record.action, record.grant]),
        [
          ['grant.revoked', c.id],
          ['grant.revoked', b.id],
        ],
        "exactly the two revocations made while disconnected; a's is not repeated",
      );
    });

    it('numbers records 1, 2, 3, ... and pages through them with a cursor', async () => {
      const first = (await as<Page>('auditor', 'GET', 'audit?limit=2')).body;
      assert.deepEqual(
        first.records.map((record) => record.seq),
        [1, 2],
      );
      assert.ok(
        first.records.some((record) => record.action === 'config.loaded'),
        'the broker start is on the trail',
      );
      assert.equal(first.next, 2);
      const second = (await as<Page>('auditor', 'GET', `audit?limit=2&after=${first.next}`)).body;
      assert.equal(second.records[0]?.seq, 3);
    });

    it('lets a requester read only records about itself', async () => {
      // bo has done nothing yet but be given a token: that record is about bo.
      const mine = (await as<Page>('bo', 'GET', 'audit')).body.records;
      assert.deepEqual(
        mine.map((record) => [record.action, record.subject]),
        [['token.created', 'user:bo']],
      );
      assert.deepEqual(mine[0]?.details.roles, ['requester']);
      // What the auditor sees of the others (ana's grants, the other tokens) is not in bo's view.
      const all = (await as<Page>('auditor', 'GET', 'audit?limit=1000')).body.records;
      assert.ok(all.some((record) => record.subject === 'user:ana' && record.action === 'grant.issued'));
      const other = await as<{ code: string }>('bo', 'GET', 'audit?subject=user:ana');
      assert.equal(other.status, 403);
    });

    it('raises a denied-burst alert after repeated refusals by one subject', async () => {
      for (let attempt = 0; attempt < 3; attempt += 1) {
        assert.equal((await as('bo', 'POST', 'grants', { scopes: ['datasets/train'] })).status, 403);
      }
      const alert = await until('the burst alert', async () => {
        const records = (await as<Page>('auditor', 'GET', 'audit?action=alert.denied_burst&subject=user:bo')).body.records;
        return records[0];
      });
      assert.equal(alert.details.denials, 3);
    });

    it('exports every record to the JSONL file and, after retries, to the signed webhook, in order', async () => {
      const head = (await verify()).records;
      const lines = await until('the file sink to catch up', async () => {
        const text = await readFile(path.join(broker.dir, 'audit.jsonl'), 'utf8').catch(() => '');
        const records = text
          .trim()
          .split('\n')
          .filter(Boolean)
          .map((line) => JSON.parse(line) as AuditRecord);
        return records.length >= head ? records : undefined;
      });
      assert.deepEqual(
        lines.slice(0, head).map((record) => record.seq),
        Array.from({ length: head }, (_, index) => index + 1),
      );
      const delivered = await until('the webhook to catch up', async () => {
        const records = receiver.bodies.flatMap((delivery) => (JSON.parse(delivery.body) as { records: AuditRecord[] }).records);
        return records.length >= head ? records : undefined;
      });
      assert.equal(delivered[0]?.seq, 1, 'the refused deliveries were retried from the start');
      const [delivery] = receiver.bodies;
      assert.ok(delivery);
      const expected = createHmac('sha256', 'whsec-test').update(`${delivery.headers['x-jit-timestamp']}.${delivery.body}`).digest('hex');
      assert.equal(delivery.headers['x-jit-signature'], `sha256=${expected}`);
      assert.match(String(delivery.headers['idempotency-key']), /^jit-audit-[0-9a-f]{16}-1-\d+$/);
    });

    it('verifies the untouched chain up to its last checkpoint', async () => {
      const report = await verify();
      assert.equal(report.ok, true, report.problem?.message);
      assert.ok(report.records >= 10);
      assert.ok(report.checkpoint, 'a checkpoint was signed');
      assert.ok(report.checkpoint.position >= 5);
      const key = (await as<{ keyId: string }>('auditor', 'GET', 'audit/key')).body;
      assert.equal(report.checkpoint.keyId, key.keyId);
    });

    it('refuses verification to a requester', async () => {
      assert.equal((await as('ana', 'GET', 'audit/verify')).status, 403);
    });

    it('catches an edited record', async () => {
      await tamper(`UPDATE events SET detail = replace(detail, 'finetune', 'innocent') WHERE type = 'grant.issued'`);
      const report = await verify();
      assert.equal(report.ok, false);
      assert.equal(report.problem?.kind, 'altered');
      const issued = (await as<Page>('auditor', 'GET', 'audit?action=grant.issued')).body.records[0];
      assert.equal(report.problem?.position, issued?.seq);
      await tamper(`UPDATE events SET detail = replace(detail, 'innocent', 'finetune') WHERE type = 'grant.issued'`);
      assert.equal((await verify()).ok, true, 'undoing the edit verifies again');
    });

    it('catches reordered records', async () => {
      await tamper('UPDATE events SET position = -position WHERE position IN (3, 4)');
      await tamper('UPDATE events SET position = 4 WHERE position = -3');
      await tamper('UPDATE events SET position = 3 WHERE position = -4');
      const report = await verify();
      assert.equal(report.problem?.kind, 'altered');
      assert.equal(report.problem?.position, 3);
      await tamper('UPDATE events SET position = -position WHERE position IN (3, 4)');
      await tamper('UPDATE events SET position = 4 WHERE position = -3');
      await tamper('UPDATE events SET position = 3 WHERE position = -4');
      assert.equal((await verify()).ok, true);
    });

    it('catches a chain rewritten from an edit onwards (every hash recomputed), by its signed checkpoint', async () => {
      const records = (await as<Page>('auditor', 'GET', 'audit?limit=1000')).body.records;
      const lastCheckpoint = (await verify()).checkpoint?.position ?? 0;
      assert.ok(lastCheckpoint >= 2, 'a checkpoint covers record 2');
      // Edit record 2 and recompute the hash of every record after it, as a careful forger would.
      const rows: { seq: number; detail: string; hash: string }[] = [];
      let previous = records[0]?.hash ?? '';
      for (const record of records.slice(1)) {
        const detail = JSON.stringify(record.seq === 2 ? { ...record.details, forged: true } : record.details);
        const fields = { ...record, position: record.seq, at: Date.parse(record.at), grantId: record.grant, detail };
        previous = recordHash(previous, fields);
        rows.push({ seq: record.seq, detail, hash: previous });
      }
      const write = async (changes: { seq: number; detail: string; hash: string }[]) => {
        for (const row of changes) {
          await tamper(
            `UPDATE events SET detail = '${row.detail.replaceAll("'", "''")}', hash = '${row.hash}' WHERE position = ${row.seq}`,
          );
        }
      };
      await write(rows);
      const report = await verify();
      assert.equal(report.problem?.kind, 'rewritten', report.problem?.message);
      assert.ok((report.problem?.position ?? 0) >= 2 && (report.problem?.position ?? 0) <= lastCheckpoint);
      await write(records.slice(1).map((record) => ({ seq: record.seq, detail: JSON.stringify(record.details), hash: record.hash })));
      assert.equal((await verify()).ok, true);
    });

    it('catches a forged checkpoint signature', async () => {
      await tamper(
        `UPDATE audit_checkpoints SET signature = 'AAAA' || substr(signature, 5) WHERE position = (SELECT min(position) FROM audit_checkpoints)`,
      );
      const report = await verify();
      assert.equal(report.problem?.kind, 'bad-signature');
    });

    it('catches a truncated tail, then a deleted record (destructive: last)', async () => {
      await tamper(`DELETE FROM audit_checkpoints WHERE position = (SELECT min(position) FROM audit_checkpoints)`);
      assert.equal((await verify()).ok, true, 'the chain without the forged checkpoint verifies');
      const last = (await verify()).checkpoint?.position ?? 0;
      await tamper(`DELETE FROM events WHERE position >= ${last}`);
      const truncated = await verify();
      assert.equal(truncated.problem?.kind, 'truncated');
      assert.equal(truncated.problem?.position, last);
      assert.equal(truncated.records, last - 1);
      await tamper('DELETE FROM events WHERE position = 3');
      const missing = await verify();
      assert.equal(missing.problem?.kind, 'missing');
      assert.equal(missing.problem?.position, 3);
      assert.equal(missing.records, 2);
    });
  });
}
