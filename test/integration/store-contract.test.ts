import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, describe, it } from 'node:test';
import {
  canonicalDetail,
  GENESIS,
  outcomeOf,
  recordHash,
  type SigningKey,
  signCheckpoint,
  signingKeyFromPem,
} from '../../src/broker/audit/chain.ts';
import { ChainVerifier } from '../../src/broker/audit/verify.ts';
import { SCHEMA_VERSION } from '../../src/broker/store/migrations.ts';
import { PostgresStore } from '../../src/broker/store/postgres.ts';
import { SqliteStore } from '../../src/broker/store/sqlite.ts';
import {
  type AlertHistory,
  type AuditEvent,
  type AuditRow,
  type BrokerStore,
  type ChainHead,
  type GrantRecord,
  NO_HEARTBEAT,
  type PrincipalRecord,
  type SealPlan,
  type UnsealedRow,
} from '../../src/broker/store/store.ts';
import type { GrantState } from '../../src/core/grant.ts';
import { createTestDatabase, postgresSkipReason, queryDatabase } from '../helpers/postgres.ts';

/** An event as the store gives it back: actor, scope and outcome filled in as appending defaults them. */
function stored(event: AuditEvent): Required<AuditEvent> {
  const by = event.detail.by;
  return {
    actor: typeof by === 'string' ? by : event.subject,
    scope: null,
    outcome: outcomeOf(event.type),
    ...event,
  } as Required<AuditEvent>;
}

/**
 * One contract, every engine: the same cases run against a real SQLite file and a real
 * PostgreSQL database. Each case gets a fresh, empty database.
 */
type Database = {
  /** Opens (and migrates) another store on this database. */
  open(): Promise<BrokerStore>;
  /** The versions recorded in schema_migrations, in order. */
  appliedVersions(): Promise<number[]>;
  /** Runs raw SQL on the database, outside any store. */
  exec(sql: string): Promise<void>;
  drop(): Promise<void>;
};

type Engine = { name: string; skip: string | undefined; fresh(): Promise<Database> };

const sqlite: Engine = {
  name: 'sqlite',
  skip: undefined,
  async fresh() {
    const dir = await mkdtemp(path.join(tmpdir(), 'jit-store-'));
    const file = path.join(dir, 'broker.db');
    const raw = <T>(action: (db: DatabaseSync) => T): T => {
      const db = new DatabaseSync(file);
      try {
        return action(db);
      } finally {
        db.close();
      }
    };
    return {
      open: async () => new SqliteStore(file),
      appliedVersions: async () =>
        raw((db) =>
          db
            .prepare('SELECT version FROM schema_migrations ORDER BY version')
            .all()
            .map((row) => Number(row.version)),
        ),
      exec: async (sql) => raw((db) => db.exec(sql)),
      drop: () => rm(dir, { recursive: true, force: true }),
    };
  },
};

const postgres: Engine = {
  name: 'postgres',
  skip: await postgresSkipReason(),
  async fresh() {
    const database = await createTestDatabase();
    return {
      open: () => PostgresStore.open(database.url, { maxConnections: 4 }),
      appliedVersions: async () =>
        (await queryDatabase(database.url, 'SELECT version FROM schema_migrations ORDER BY version')).map((row) => Number(row.version)),
      exec: async (sql) => {
        await queryDatabase(database.url, sql);
      },
      drop: database.drop,
    };
  },
};

const T0 = 1_800_000_000_000;
let serial = 0;

function grant(overrides: Partial<GrantRecord> = {}): GrantRecord {
  serial += 1;
  return {
    id: `g_${serial}_${Math.random().toString(36).slice(2, 8)}`,
    subject: 'user:ada',
    scopes: ['datasets/train:read'],
    reason: null,
    state: 'active',
    credentialHash: `hash-${serial}-${Math.random()}`,
    createdAt: T0 + serial,
    expiresAt: T0 + 3_600_000,
    heartbeatDeadline: T0 + 30_000,
    endedAt: null,
    endReason: null,
    decision: '{"rule":"r"}',
    ttlSeconds: 3600,
    activatedAt: T0 + serial,
    approvalDeadline: null,
    ...overrides,
  };
}

function principal(overrides: Partial<PrincipalRecord> = {}): PrincipalRecord {
  serial += 1;
  return {
    tokenId: `tok_${serial}_${Math.random().toString(36).slice(2, 8)}`,
    subject: 'user:ada',
    tokenHash: `token-hash-${serial}-${Math.random()}`,
    roles: ['requester'],
    label: null,
    createdBy: 'user:root',
    createdAt: T0 + serial,
    revokedAt: null,
    ...overrides,
  };
}

async function drain(store: BrokerStore, now: number, limit: number): Promise<string[]> {
  const ended: string[] = [];
  for (;;) {
    const batch = await store.expireDue(now, limit);
    assert.ok(batch.length <= limit, `a batch of ${batch.length} is over the limit of ${limit}`);
    ended.push(...batch.map((record) => record.id));
    if (batch.length === 0) return ended;
  }
}

const AUDIT_KEY: SigningKey = signingKeyFromPem(String(generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' })));

/** Plans a seal step as AuditLog does: positions after the head, chained hashes, a checkpoint every `every` records. */
function chainPlan(every: number): (head: ChainHead, rows: UnsealedRow[]) => SealPlan {
  return (head, rows) => {
    let previous = head.position === 0 ? GENESIS : head.hash;
    let position = head.position;
    const sealed = rows.map((row) => {
      position += 1;
      const detail = canonicalDetail(row.detail);
      previous = recordHash(previous, { ...row, position, detail });
      return { seq: row.seq, position, hash: previous, detail };
    });
    const due = !head.checkpoint || position - head.checkpoint.position >= every;
    return { sealed, checkpoint: due ? signCheckpoint(AUDIT_KEY, position, previous, T0) : undefined };
  };
}

/** Every sealed record, page by page. */
async function sealedRecords(store: BrokerStore): Promise<AuditRow[]> {
  const all: AuditRow[] = [];
  for (;;) {
    const page = await store.queryAudit({ afterPosition: all.at(-1)?.position ?? 0, limit: 100 });
    all.push(...page);
    if (page.length < 100) return all;
  }
}

/** The store's whole chain through the verifier `jit audit verify` uses. */
async function verifyChain(store: BrokerStore): Promise<{ ok: boolean; records: number; problem: string | undefined }> {
  const verifier = new ChainVerifier(await store.listCheckpoints(), new Map([[AUDIT_KEY.keyId, AUDIT_KEY.publicKey]]));
  for (const row of await sealedRecords(store)) if (!verifier.add(row, row.hash)) break;
  const report = verifier.finish(0, 0);
  return { ok: report.ok, records: report.records, problem: report.problem?.message };
}

for (const engine of [sqlite, postgres]) {
  describe(`store contract: ${engine.name}`, { skip: engine.skip }, () => {
    const cleanups: (() => Promise<void>)[] = [];
    after(async () => {
      for (const cleanup of cleanups.reverse()) await cleanup();
    });

    /** A fresh database and a store open on it, both closed after the suite. */
    async function fresh(): Promise<{ db: Database; store: BrokerStore }> {
      const db = await engine.fresh();
      cleanups.push(db.drop);
      const store = await db.open();
      cleanups.push(() => store.close());
      return { db, store };
    }

    it('finds principals by token hash only, roles and all', async () => {
      const { store } = await fresh();
      const ada = principal({ tokenHash: 'h1', roles: ['requester', 'approver'], label: 'laptop' });
      await store.addPrincipal(ada);
      assert.deepEqual(await store.findPrincipalByTokenHash('h1'), ada);
      assert.equal(await store.findPrincipalByTokenHash('h2'), undefined);
      await assert.rejects(store.addPrincipal(principal({ subject: 'user:bob', tokenHash: 'h1' })), 'a token hash is unique');
      await assert.rejects(store.addPrincipal(principal({ tokenId: ada.tokenId })), 'a token id is unique');
      assert.deepEqual(await store.listPrincipals(), [ada], 'a refused insert leaves nothing behind');
    });

    it('keeps OIDC sessions by bearer hash with their claims, and forgets expired ones at the next exchange', async () => {
      const { store } = await fresh();
      const session = (id: string, hash: string, createdAt: number, expiresAt: number) => ({
        sessionId: `ses_${id.padStart(20, '0')}`,
        subject: 'ci:github:acme/train@refs/heads/main',
        tokenHash: hash,
        issuer: 'github',
        claims: { repository: 'acme/train', ref: 'refs/heads/main', ref_protected: true, run_id: 42, aud: ['a', 'b'] },
        createdAt,
        expiresAt,
      });
      const early = session('1', 's1', T0, T0 + 60_000);
      await store.addSession(early);
      assert.deepEqual(await store.findSessionByTokenHash('s1'), early, 'claims come back with their JSON types');
      assert.equal(await store.findSessionByTokenHash('s2'), undefined);
      await assert.rejects(store.addSession(session('2', 's1', T0 + 1, T0 + 60_000)), 'a bearer hash is unique');
      const later = session('3', 's3', T0 + 120_000, T0 + 180_000);
      await store.addSession(later);
      assert.equal(await store.findSessionByTokenHash('s1'), undefined, 'expired before the new one: forgotten');
      assert.deepEqual(await store.findSessionByTokenHash('s3'), later);
    });

    it('writes a token and its audit event together, or neither', async () => {
      const { store } = await fresh();
      const ada = principal();
      const event = { at: T0, type: 'token.created', subject: ada.subject, grantId: null, detail: { tokenId: ada.tokenId } };
      await store.addPrincipal(ada, event);
      await assert.rejects(store.addPrincipal(principal({ tokenHash: ada.tokenHash }), { ...event, detail: { tokenId: 'dup' } }));
      assert.deepEqual(await store.listEvents({}), [stored(event)]);
    });

    it('revokes a token once: it stops authenticating, stays listed, and its event is written with it', async () => {
      const { store } = await fresh();
      const ada = principal({ createdAt: T0 });
      const bob = principal({ subject: 'user:bob', createdAt: T0 + 1 });
      await store.addPrincipal(ada);
      await store.addPrincipal(bob);
      const event = { at: T0 + 5, type: 'token.revoked', grantId: null, detail: { tokenId: ada.tokenId, by: 'user:root' } };
      const results = await Promise.all([
        store.revokePrincipal(ada.tokenId, T0 + 5, event),
        store.revokePrincipal(ada.tokenId, T0 + 5, event),
      ]);
      assert.equal(results.filter(Boolean).length, 1, 'exactly one of two concurrent revocations changes the token');
      assert.deepEqual(results.find(Boolean), { ...ada, revokedAt: T0 + 5 });
      assert.equal(await store.findPrincipalByTokenHash(ada.tokenHash), undefined);
      assert.deepEqual(await store.findPrincipalByTokenHash(bob.tokenHash), bob);
      assert.deepEqual(await store.listPrincipals(), [{ ...ada, revokedAt: T0 + 5 }, bob], 'oldest first, revoked ones too');
      assert.deepEqual(await store.listEvents({}), [stored({ ...event, subject: 'user:ada' })]);
      assert.equal(await store.revokePrincipal('tok_nope', T0 + 7, event), undefined);
      assert.equal((await store.listEvents({})).length, 1, 'no event when nothing changed');
    });

    it('stores grants whole and lists them newest first by subject and state', async () => {
      const { store } = await fresh();
      const first = grant({ reason: 'fine-tune run 7', scopes: ['datasets/train:read', 'datasets/eval/holdout.jsonl:read'] });
      const second = grant({ subject: 'user:bob' });
      const third = grant({ state: 'revoked', endedAt: T0 + 5, endReason: 'revoked by user:ada' });
      for (const record of [first, second, third]) await store.insertGrant(record);
      assert.deepEqual(await store.getGrant(first.id), first);
      assert.deepEqual(await store.findGrantByCredentialHash(third.credentialHash), third);
      assert.equal(await store.getGrant('g_missing'), undefined);
      assert.equal(await store.findGrantByCredentialHash('nope'), undefined);
      assert.deepEqual(
        (await store.listGrants({})).map((record) => record.id),
        [third.id, second.id, first.id],
      );
      assert.deepEqual(
        (await store.listGrants({ subject: 'user:ada' })).map((record) => record.id),
        [third.id, first.id],
      );
      const states: GrantState[] = ['active'];
      assert.deepEqual(
        (await store.listGrants({ subject: 'user:ada', states })).map((record) => record.id),
        [first.id],
      );
      await assert.rejects(store.insertGrant(grant({ credentialHash: first.credentialHash })), 'a credential hash is unique');
    });

    it('writes a grant and its audit event together, or neither', async () => {
      const { store } = await fresh();
      const first = grant();
      const issued = (record: GrantRecord) => ({
        at: record.createdAt,
        type: 'grant.issued',
        subject: record.subject,
        grantId: record.id,
        detail: { n: 1 },
      });
      await store.insertGrant(first, issued(first));
      assert.deepEqual(
        (await store.listEvents({ grantId: first.id })).map((event) => event.type),
        ['grant.issued'],
      );
      const clash = grant({ credentialHash: first.credentialHash });
      await assert.rejects(store.insertGrant(clash, issued(clash)));
      assert.deepEqual(await store.listEvents({ grantId: clash.id }), [], 'no event for a grant that was not written');
      assert.equal(await store.getGrant(clash.id), undefined);
    });

    it('appends a batch of events in one call, in order', async () => {
      const { store } = await fresh();
      await store.appendEvents([]);
      const batch = ['a', 'b', 'c'].map((name, index) => ({
        at: 1000 + index,
        type: `test.${name}`,
        subject: 'user:ada',
        grantId: null,
        detail: { index },
      }));
      await store.appendEvents(batch);
      assert.deepEqual(await store.listEvents({}), batch.map(stored));
    });

    it('extends a heartbeat only while the grant is usable', async () => {
      const { store } = await fresh();
      const live = grant();
      const ended = grant({ state: 'revoked', endedAt: T0, endReason: 'x' });
      await store.insertGrant(live);
      await store.insertGrant(ended);
      const extended = await store.extendHeartbeat(live.id, T0 + 60_000, T0 + 10_000);
      assert.equal(extended?.heartbeatDeadline, T0 + 60_000);
      assert.equal((await store.getGrant(live.id))?.heartbeatDeadline, T0 + 60_000);
      assert.equal(await store.extendHeartbeat(live.id, T0 + 200_000, T0 + 60_000), undefined, 'the heartbeat deadline has passed');
      assert.equal(await store.extendHeartbeat(ended.id, T0 + 60_000, T0 + 1), undefined, 'the grant has ended');
      const expiring = grant({ expiresAt: T0 + 20_000 });
      await store.insertGrant(expiring);
      assert.equal(await store.extendHeartbeat(expiring.id, T0 + 50_000, T0 + 20_000), undefined, 'the grant is past its TTL');
      assert.equal((await store.getGrant(live.id))?.heartbeatDeadline, T0 + 60_000, 'refused extensions change nothing');
    });

    it('ends a grant once: of two concurrent endGrant calls exactly one wins', async () => {
      const { store } = await fresh();
      const record = grant();
      await store.insertGrant(record);
      const results = await Promise.all([
        store.endGrant(record.id, 'revoked', 'revoked by user:ada', T0 + 1),
        store.endGrant(record.id, 'expired', 'ttl', T0 + 2),
      ]);
      const winners = results.filter((result) => result !== undefined);
      assert.equal(winners.length, 1);
      const stored = await store.getGrant(record.id);
      assert.equal(stored?.state, winners[0]?.state);
      assert.equal(stored?.endedAt, winners[0]?.endedAt);
      assert.equal(await store.endGrant(record.id, 'revoked', 'again', T0 + 3), undefined);
    });

    it('expires due grants in bounded batches, naming why, and leaves the rest', async () => {
      const { store } = await fresh();
      const pastTtl = Array.from({ length: 4 }, () => grant({ expiresAt: T0 + 1000, heartbeatDeadline: T0 + 50_000 }));
      const lapsed = Array.from({ length: 3 }, () => grant({ heartbeatDeadline: T0 + 2000 }));
      const notDue = grant({ heartbeatDeadline: T0 + 9000 });
      const alreadyRevoked = grant({ state: 'revoked', expiresAt: T0, endedAt: T0, endReason: 'x' });
      for (const record of [...pastTtl, ...lapsed, notDue, alreadyRevoked]) await store.insertGrant(record);
      const now = T0 + 5000;
      const firstBatch = await store.expireDue(now, 5);
      assert.equal(firstBatch.length, 5);
      const secondBatch = await store.expireDue(now, 5);
      assert.equal(secondBatch.length, 2);
      assert.deepEqual(await store.expireDue(now, 5), []);
      const ended = new Map([...firstBatch, ...secondBatch].map((record) => [record.id, record]));
      assert.deepEqual([...ended.keys()].sort(), [...pastTtl, ...lapsed].map((record) => record.id).sort());
      for (const record of pastTtl) assert.equal(ended.get(record.id)?.endReason, 'ttl');
      for (const record of lapsed) assert.equal(ended.get(record.id)?.endReason, 'heartbeat');
      for (const record of ended.values()) {
        assert.equal(record.state, 'expired');
        assert.equal(record.endedAt, now);
      }
      assert.equal((await store.getGrant(notDue.id))?.state, 'active');
      assert.equal((await store.getGrant(alreadyRevoked.id))?.endReason, 'x');
    });

    it('expires each due grant exactly once when two stores sweep the same database at once', async () => {
      const { db, store } = await fresh();
      const other = await db.open();
      cleanups.push(() => other.close());
      const due = Array.from({ length: 300 }, () => grant({ heartbeatDeadline: T0 + 1000 }));
      for (const record of due) await store.insertGrant(record);
      const [a, b] = await Promise.all([drain(store, T0 + 2000, 7), drain(other, T0 + 2000, 7)]);
      const all = [...a, ...b];
      assert.equal(new Set(all).size, all.length, 'no grant was expired twice');
      assert.deepEqual(all.sort(), due.map((record) => record.id).sort());
    });

    it('appends events and lists them in order, by grant too', async () => {
      const { store } = await fresh();
      const events = [
        { at: T0 + 3, type: 'grant.issued', subject: 'user:ada', grantId: 'g1', detail: { scopes: ['datasets/train:read'], ttl: 60 } },
        { at: T0 + 1, type: 'data.refused', subject: null, grantId: null, detail: { reason: 'unknown_credential' } },
        { at: T0 + 2, type: 'grant.revoked', subject: 'user:ada', grantId: 'g1', detail: { by: 'user:ada', nested: { n: 1 } } },
      ];
      for (const event of events) await store.appendEvent(event);
      // The actor defaults to detail.by, then to the subject; the outcome to what the type implies.
      const stored = [
        { ...events[0], actor: 'user:ada', scope: null, outcome: 'ok' },
        { ...events[1], actor: null, scope: null, outcome: 'denied' },
        { ...events[2], actor: 'user:ada', scope: null, outcome: 'ok' },
      ];
      assert.deepEqual(await store.listEvents({}), stored, 'in append order, not by time');
      assert.deepEqual(await store.listEvents({ grantId: 'g1' }), [stored[0], stored[2]]);
      assert.deepEqual(await store.listEvents({ grantId: 'g2' }), []);
    });

    it('migrates once: reopening keeps data and records each version once', async () => {
      const { db, store } = await fresh();
      const record = grant();
      await store.insertGrant(record);
      await store.close();
      const reopened = await db.open();
      cleanups.push(() => reopened.close());
      assert.deepEqual(await reopened.getGrant(record.id), record);
      const expected = Array.from({ length: SCHEMA_VERSION }, (_, index) => index + 1);
      assert.deepEqual(await db.appliedVersions(), expected);
    });

    it('activates a pending grant once, and not after its approval deadline', async () => {
      const { store } = await fresh();
      const pending = grant({ state: 'pending', activatedAt: null, approvalDeadline: T0 + 60_000, heartbeatDeadline: NO_HEARTBEAT });
      const late = grant({ state: 'pending', activatedAt: null, approvalDeadline: T0 + 10 });
      for (const record of [pending, late]) await store.insertGrant(record);
      const times = { activatedAt: T0 + 100, expiresAt: T0 + 3_600_100 };
      const [first, second] = await Promise.all([store.activateGrant(pending.id, times), store.activateGrant(pending.id, times)]);
      assert.equal([first, second].filter(Boolean).length, 1, 'exactly one activation wins');
      assert.deepEqual(await store.getGrant(pending.id), { ...pending, state: 'active', ...times });
      assert.equal(await store.activateGrant(late.id, times), undefined, 'past its approval deadline');
      assert.equal((await store.getGrant(late.id))?.state, 'pending');
    });

    it('keeps one verdict per reviewer and grant', async () => {
      const { store } = await fresh();
      const pending = grant({ state: 'pending', activatedAt: null, approvalDeadline: T0 + 60_000 });
      await store.insertGrant(pending);
      const verdict = { grantId: pending.id, approver: 'user:carol', verdict: 'approve' as const, reason: null, at: T0 + 1 };
      assert.equal(await store.addApproval(verdict), true);
      assert.equal(await store.addApproval({ ...verdict, verdict: 'deny', reason: 'changed my mind', at: T0 + 2 }), false);
      assert.equal(await store.addApproval({ ...verdict, approver: 'user:dan', reason: 'ok for run 7', at: T0 + 3 }), true);
      assert.deepEqual(await store.listApprovals(pending.id), [
        verdict,
        { ...verdict, approver: 'user:dan', reason: 'ok for run 7', at: T0 + 3 },
      ]);
      assert.deepEqual(await store.listApprovals('g_other'), []);
    });

    it('ends a pending grant only from pending (deny, cancel), and an active one only from active', async () => {
      const { store } = await fresh();
      const pending = grant({ state: 'pending', activatedAt: null, approvalDeadline: T0 + 60_000 });
      await store.insertGrant(pending);
      assert.equal(await store.endGrant(pending.id, 'revoked', 'x', T0 + 1), undefined, 'not active');
      const denied = await store.endGrant(pending.id, 'denied', 'denied by user:carol: not for eval data', T0 + 2, 'pending');
      assert.equal(denied?.state, 'denied');
      assert.equal(await store.endGrant(pending.id, 'cancelled', 'x', T0 + 3, 'pending'), undefined, 'already denied');
    });

    it('ends each pending grant past its approval deadline or abandoned by its waiter exactly once', async () => {
      const { store } = await fresh();
      const due = Array.from({ length: 7 }, () => grant({ state: 'pending', activatedAt: null, approvalDeadline: T0 + 10 }));
      const notYet = grant({ state: 'pending', activatedAt: null, approvalDeadline: T0 + 10_000, heartbeatDeadline: NO_HEARTBEAT });
      const abandoned = grant({ state: 'pending', activatedAt: null, approvalDeadline: T0 + 10_000, heartbeatDeadline: T0 + 15 });
      for (const record of [...due, notYet, abandoned]) await store.insertGrant(record);
      const batches = await Promise.all([
        store.timeOutPending(T0 + 20, 3),
        store.timeOutPending(T0 + 20, 3),
        store.timeOutPending(T0 + 20, 3),
      ]);
      const rest = await store.timeOutPending(T0 + 20, 3);
      const ended = [...batches.flat(), ...rest].map((record) => record.id).sort();
      assert.deepEqual(ended, [...due, abandoned].map((record) => record.id).sort());
      for (const record of [...batches.flat(), ...rest]) {
        const expected = record.id === abandoned.id ? ['cancelled', 'requester stopped waiting'] : ['timed-out', 'approval timeout'];
        assert.deepEqual([record.state, record.endReason], expected);
      }
      assert.equal((await store.getGrant(notYet.id))?.state, 'pending');
    });

    it('renews only a usable grant, and only later', async () => {
      const { store } = await fresh();
      const live = grant({ expiresAt: T0 + 1_000, heartbeatDeadline: T0 + 500 });
      await store.insertGrant(live);
      assert.equal(await store.renewGrant(live.id, T0 + 900, T0 + 10), undefined, 'not later than now');
      assert.equal((await store.renewGrant(live.id, T0 + 5_000, T0 + 10))?.expiresAt, T0 + 5_000);
      assert.equal(await store.renewGrant(live.id, T0 + 9_000, T0 + 600), undefined, 'heartbeat lapsed');
      await store.endGrant(live.id, 'revoked', 'x', T0 + 20);
      assert.equal(await store.renewGrant(live.id, T0 + 9_000, T0 + 30), undefined, 'revoked');
    });

    it('keeps a cleanup until it is done, and hands each due one to one claimer at a time', async () => {
      const { store } = await fresh();
      const base = { resources: ['warehouse'], attempts: 1, lastError: 'database unreachable', createdAt: T0, doneAt: null };
      for (let index = 0; index < 5; index++) await store.saveDeprovision({ ...base, grantId: `g_dep${index}`, nextAttemptAt: T0 + 10 });
      await store.saveDeprovision({ ...base, grantId: 'g_later', nextAttemptAt: T0 + 10_000 });
      const claims = await Promise.all([1, 2, 3].map(() => store.claimDeprovisions(T0 + 20, T0 + 60_020, 2)));
      const claimed = claims.flat().map((record) => record.grantId);
      assert.equal(new Set(claimed).size, claimed.length, 'no cleanup goes to two claimers');
      const rest = await store.claimDeprovisions(T0 + 20, T0 + 60_020, 10);
      assert.deepEqual([...claimed, ...rest.map((record) => record.grantId)].sort(), ['g_dep0', 'g_dep1', 'g_dep2', 'g_dep3', 'g_dep4']);
      assert.deepEqual(await store.claimDeprovisions(T0 + 30, T0 + 60_030, 10), [], 'leased until the attempt is over');
      const [first] = claims.flat();
      assert.equal(first?.nextAttemptAt, T0 + 60_020);
      assert.deepEqual(first?.resources, ['warehouse']);
      await store.saveDeprovision({ ...(first ?? base), grantId: first?.grantId ?? '', attempts: 2, doneAt: T0 + 40, lastError: null });
      assert.equal((await store.getDeprovision(first?.grantId ?? ''))?.doneAt, T0 + 40);
      assert.equal(
        (await store.claimDeprovisions(T0 + 120_000, T0 + 180_000, 10)).some((record) => record.grantId === first?.grantId),
        false,
        'done is done',
      );
      assert.equal(await store.getDeprovision('g_none'), undefined);
    });

    it('refuses a database a newer broker has migrated', async () => {
      const { db } = await fresh();
      await db.exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (${SCHEMA_VERSION + 1}, 'from the future', 0)`);
      await assert.rejects(db.open(), (error: Error & { code?: string }) => {
        assert.equal(error.code, 'store_too_new');
        assert.match(error.message, new RegExp(`schema version ${SCHEMA_VERSION + 1}; this broker knows versions up to ${SCHEMA_VERSION}`));
        return true;
      });
    });

    it('lets several stores open a fresh database at the same moment', async () => {
      const db = await engine.fresh();
      cleanups.push(db.drop);
      const stores = await Promise.all([db.open(), db.open(), db.open()]);
      for (const store of stores) cleanups.push(() => store.close());
      const record = grant();
      await stores[0]?.insertGrant(record);
      assert.deepEqual(await stores[2]?.getGrant(record.id), record);
      assert.deepEqual(
        await db.appliedVersions(),
        Array.from({ length: SCHEMA_VERSION }, (_, index) => index + 1),
      );
    });

    /** An audit event at T0 + `at`, about grant `grantId` of `subject` (defaults: user:ada's g1). */
    const auditEvent = (type: string, at: number, overrides: Partial<AuditEvent> = {}): AuditEvent => ({
      at: T0 + at,
      type,
      subject: 'user:ada',
      grantId: 'g1',
      detail: { n: at },
      ...overrides,
    });

    it('seals events into the chain in insertion order: positions 1..n, each hash chained to the one before', async () => {
      const { store } = await fresh();
      // Insertion order, not time order, decides the position.
      const events = [30, 10, 20, 50, 40].map((at, index) => auditEvent(`test.e${index}`, at));
      await store.appendEvents(events.slice(0, 3));
      await store.appendEvent(events[3] as AuditEvent);
      await store.appendEvents(events.slice(4));
      assert.deepEqual(await store.unsealed(), { count: 5, oldestAt: T0 + 10 });
      assert.deepEqual(await store.queryAudit({ limit: 10 }), [], 'nothing shows before it is sealed');
      assert.equal(await store.sealEvents(3, chainPlan(1000)), 3);
      assert.equal(await store.sealEvents(3, chainPlan(1000)), 2);
      assert.equal(await store.sealEvents(3, chainPlan(1000)), 0);
      assert.deepEqual(await store.unsealed(), { count: 0, oldestAt: null });
      const records = await store.queryAudit({ limit: 10 });
      assert.deepEqual(
        records.map((record) => [record.position, record.action, record.at]),
        events.map((event, index) => [index + 1, event.type, event.at]),
      );
      let previous = GENESIS;
      for (const record of records) {
        assert.equal(record.hash, recordHash(previous, record));
        previous = record.hash;
      }
      assert.deepEqual(await store.readChain(0, 10), records, 'verify reads the same rows');
      assert.deepEqual(
        (await store.readChain(2, 2)).map((record) => record.position),
        [3, 4],
      );
      const head = await store.chainHead();
      assert.equal(head.position, 5);
      assert.equal(head.hash, previous);
      // One checkpoint per seal step here (the first has none before it; the second is 2 < 1000 after it).
      assert.deepEqual(
        (await store.listCheckpoints()).map((checkpoint) => checkpoint.position),
        [3],
      );
      assert.deepEqual(head.checkpoint?.position, 3);
      assert.equal((await verifyChain(store)).ok, true);
    });

    it('stores the canonical detail the chain hashed, and the actor, scope and outcome appended with it', async () => {
      const { store } = await fresh();
      await store.appendEvents([
        auditEvent('grant.revoked', 1, { detail: { by: 'user:root', reason: 'done' }, scope: 'datasets/train datasets/eval' }),
        auditEvent('data.refused', 2, { subject: null, grantId: null, detail: { reason: 'unknown_credential' } }),
      ]);
      await store.sealEvents(10, chainPlan(1000));
      const [revoked, refused] = await store.queryAudit({ limit: 10 });
      assert.equal(revoked?.actor, 'user:root');
      assert.equal(revoked?.scope, 'datasets/train datasets/eval');
      assert.equal(revoked?.outcome, 'ok');
      assert.equal(revoked?.detail, '{"by":"user:root","reason":"done"}');
      assert.equal(refused?.actor, null);
      assert.equal(refused?.outcome, 'denied');
    });

    it('seals every event exactly once when two stores seal the same database at once', async () => {
      const { db, store } = await fresh();
      const other = await db.open();
      cleanups.push(() => other.close());
      const count = 600;
      for (let from = 0; from < count; from += 100) {
        await store.appendEvents(Array.from({ length: 100 }, (_, index) => auditEvent('test.e', from + index)));
      }
      let rounds = 0;
      while ((await store.unsealed()).count > 0) {
        rounds += 1;
        assert.ok(rounds < 100, 'sealing makes progress');
        // Appends racing the sealers too: they must land in the chain, not beside it.
        await Promise.all([
          store.sealEvents(37, chainPlan(50)),
          other.sealEvents(37, chainPlan(50)),
          store.appendEvent(auditEvent('test.late', count + rounds)),
          other.sealEvents(37, chainPlan(50)),
          store.sealEvents(37, chainPlan(50)),
        ]);
        if (rounds === 5) await other.appendEvents([auditEvent('test.late', count + 100)]);
      }
      const records = await sealedRecords(store);
      const late = records.filter((record) => record.action === 'test.late').length;
      assert.ok(late >= 6, 'the racing appends were sealed');
      assert.deepEqual(
        records.map((record) => record.position),
        Array.from({ length: count + late }, (_, index) => index + 1),
        'positions run 1..n with no duplicate and no gap',
      );
      const verified = await verifyChain(other);
      assert.equal(verified.ok, true, verified.problem);
      assert.equal(verified.records, count + late);
      const checkpoints = await other.listCheckpoints();
      assert.equal(new Set(checkpoints.map((checkpoint) => checkpoint.position)).size, checkpoints.length);
    });

    it('queries sealed records by grant, subject, actor, action (exact or family), outcome, scope and time, ANDed', async () => {
      const { store } = await fresh();
      await store.appendEvents([
        auditEvent('grant.issued', 0, { scope: 'datasets/train datasets/eval' }),
        auditEvent('data.read', 1000, { scope: 'datasets/train' }),
        auditEvent('data.refused', 2000, { grantId: 'g2', subject: 'user:bo', scope: 'datasets/eval' }),
        auditEvent('grant.revoked', 3000, { detail: { by: 'user:root' }, scope: 'datasets/train datasets/eval' }),
        auditEvent('dataset.created', 4000, { grantId: null, subject: null, actor: 'system' }),
        auditEvent('x_y.happened', 5000, { grantId: null }),
        auditEvent('xzy.happened', 6000, { grantId: null, scope: 'warehouse/public.customers' }),
        auditEvent('grant.denied', 7000, { grantId: 'g2', subject: 'user:bo', detail: { by: 'user:root' } }),
      ]);
      await store.sealEvents(100, chainPlan(1000));
      const positions = async (query: Parameters<BrokerStore['queryAudit']>[0]) =>
        (await store.queryAudit(query)).map((record) => record.position);
      const limit = 100;
      assert.deepEqual(await positions({ limit, grantId: 'g1' }), [1, 2, 4]);
      assert.deepEqual(await positions({ limit, subject: 'user:bo' }), [3, 8]);
      assert.deepEqual(await positions({ limit, actor: 'user:root' }), [4, 8]);
      assert.deepEqual(await positions({ limit, actor: 'system' }), [5]);
      assert.deepEqual(await positions({ limit, action: 'data.read' }), [2]);
      assert.deepEqual(await positions({ limit, action: 'data.*' }), [2, 3], 'a family, and not dataset.*');
      assert.deepEqual(await positions({ limit, action: 'x_y.*' }), [6], '_ is a character, not a wildcard');
      assert.deepEqual(await positions({ limit, action: 'grant' }), []);
      assert.deepEqual(await positions({ limit, outcome: 'denied' }), [3, 8]);
      assert.deepEqual(await positions({ limit, scope: 'datasets/eval' }), [1, 3, 4], 'any of a record’s scopes');
      assert.deepEqual(await positions({ limit, scope: 'datasets' }), [1, 2, 3, 4], 'a prefix of a scope');
      assert.deepEqual(await positions({ limit, scope: 'train' }), [], 'not the middle of one');
      assert.deepEqual(await positions({ limit, scope: 'warehouse/public_customers' }), [], '_ is a character here too');
      assert.deepEqual(await positions({ limit, since: T0 + 2000, until: T0 + 5000 }), [3, 4, 5], 'since inclusive, until exclusive');
      assert.deepEqual(await positions({ limit, subject: 'user:ada', action: 'grant.*', scope: 'datasets/eval' }), [1, 4]);
      assert.deepEqual(await positions({ limit, grantId: 'g2', outcome: 'ok' }), []);
      // Paging: `afterPosition` is the cursor, `limit` the page size, and the filters hold across pages.
      assert.deepEqual(await positions({ limit: 3 }), [1, 2, 3]);
      assert.deepEqual(await positions({ limit: 3, afterPosition: 3 }), [4, 5, 6]);
      assert.deepEqual(await positions({ limit: 3, afterPosition: 6 }), [7, 8]);
      assert.deepEqual(await positions({ limit: 3, afterPosition: 8 }), []);
      assert.deepEqual(await positions({ limit: 1, afterPosition: 1, grantId: 'g1' }), [2]);
      assert.deepEqual(await positions({ limit: 1, afterPosition: 2, grantId: 'g1' }), [4]);
    });

    it('looks back for the alert rules: a grant’s requests and host alerts, a subject’s last denials and last burst, sealed or not', async () => {
      const { store } = await fresh();
      const bo = { subject: 'user:bo', grantId: null };
      await store.appendEvents([
        auditEvent('grant.requested', 0, { grantId: 'g1', detail: { source: '10.0.0.1' } }),
        auditEvent('grant.issued', 1, { grantId: 'g2', detail: { source: '10.0.0.2' } }),
        auditEvent('data.read', 2, { grantId: 'g1', detail: { source: '10.0.0.1' } }),
        auditEvent('grant.refused', 3, bo),
        auditEvent('data.refused', 4, { ...bo, grantId: 'g3' }),
        auditEvent('grant.refused', 5, { subject: 'user:cy', grantId: null }),
        auditEvent('grant.refused', 6, bo),
        auditEvent('alert.denied_burst', 7, { ...bo, detail: { record: 5 } }),
        auditEvent('grant.issued', 8, { grantId: 'g1', detail: { source: '10.0.0.3' } }),
      ]);
      await store.sealEvents(100, chainPlan(1000));
      // Appended by another replica's sealing step and not sealed yet: alerts count, a denial not yet.
      await store.appendEvents([
        auditEvent('alert.host_mismatch', 9, { grantId: 'g1', detail: { record: 3 } }),
        auditEvent('alert.denied_burst', 10, { ...bo, detail: { record: 7 } }),
        auditEvent('grant.refused', 11, bo),
      ]);
      const history = await store.alertHistory({ grantIds: ['g1', 'g9'], subjects: [{ subject: 'user:bo', denials: 2 }] });
      assert.deepEqual(
        history.map((record) => [record.position, record.action, record.subject, record.grantId, record.outcome, record.at - T0]),
        [
          [1, 'grant.requested', 'user:ada', 'g1', 'pending', 0],
          [5, 'data.refused', 'user:bo', 'g3', 'denied', 4],
          [7, 'grant.refused', 'user:bo', null, 'denied', 6],
          [9, 'grant.issued', 'user:ada', 'g1', 'ok', 8],
          [null, 'alert.host_mismatch', 'user:ada', 'g1', 'alert', 9],
          [null, 'alert.denied_burst', 'user:bo', null, 'alert', 10],
        ],
        'in insertion order; bo’s last two sealed denials and last burst only; nothing of g2, g9 or cy',
      );
      assert.deepEqual(JSON.parse(history[0]?.detail ?? ''), { source: '10.0.0.1' });
      assert.deepEqual(
        (
          await store.alertHistory({
            grantIds: [],
            subjects: [
              { subject: 'user:bo', denials: 5 },
              { subject: 'user:cy', denials: 5 },
            ],
          })
        ).map((record) => record.position),
        [4, 5, 6, 7, null],
      );
      assert.deepEqual(await store.alertHistory({ grantIds: [], subjects: [] }), []);
    });

    it('appends what a seal step derives from its batch, asked with a history that holds the batch', async () => {
      const { store } = await fresh();
      await store.appendEvents([auditEvent('grant.issued', 0, { detail: { source: '10.0.0.1' } }), auditEvent('data.read', 1)]);
      const asked: (number | null)[][] = [];
      const derive = async (history: AlertHistory) => {
        asked.push((await history.alertHistory({ grantIds: ['g1'], subjects: [] })).map((record) => record.position));
        return asked.length === 1 ? [auditEvent('alert.test', 2, { detail: { record: 2 } })] : [];
      };
      assert.equal(await store.sealEvents(10, chainPlan(1000), { derive }), 2);
      assert.deepEqual(asked, [[1]], 'the batch’s own grant.issued, sealed');
      assert.deepEqual(await store.unsealed(), { count: 1, oldestAt: T0 + 2 }, 'the derived event waits for the next step');
      assert.equal(await store.sealEvents(10, chainPlan(1000), { derive }), 1);
      assert.equal(await store.sealEvents(10, chainPlan(1000), { derive, evenIfNone: true }), 0);
      assert.equal(asked.length, 2, 'not asked when nothing was sealed');
      assert.deepEqual(
        (await store.queryAudit({ limit: 10 })).map((record) => record.action),
        ['grant.issued', 'data.read', 'alert.test'],
      );
    });

    it('leases an export sink to one owner at a time, until the lease runs out', async () => {
      const { db, store } = await fresh();
      const other = await db.open();
      cleanups.push(() => other.close());
      const first = await store.leaseSink('siem', 'replica-a', T0, T0 + 30_000, 0);
      assert.deepEqual(first, { name: 'siem', position: 0, attempts: 0, lastError: null });
      assert.equal(await other.leaseSink('siem', 'replica-b', T0 + 1000, T0 + 31_000, 0), undefined, 'refused while the lease runs');
      assert.ok(await store.leaseSink('siem', 'replica-a', T0 + 20_000, T0 + 50_000, 0), 'the owner renews it');
      assert.equal(await other.leaseSink('siem', 'replica-b', T0 + 49_999, T0 + 80_000, 0), undefined, 'the renewal counts');
      assert.ok(await other.leaseSink('siem', 'replica-b', T0 + 50_000, T0 + 80_000, 0), 'taken over once it ran out');
      assert.equal(await store.leaseSink('siem', 'replica-a', T0 + 51_000, T0 + 81_000, 0), undefined, 'the old owner is refused now');
      assert.ok(await store.leaseSink('archive', 'replica-a', T0 + 51_000, T0 + 81_000, 0), 'each sink has its own lease');
      assert.equal((await store.leaseSink('new', 'replica-a', T0, T0 + 1, 42))?.position, 42, 'a new sink starts where it is told');
    });

    it('saves a sink’s progress and failures for its owner only', async () => {
      const { store } = await fresh();
      await store.leaseSink('siem', 'replica-a', T0, T0 + 30_000, 0);
      await store.saveSink('siem', 'replica-a', { position: 10, attempts: 0, lastError: null });
      assert.deepEqual(await store.leaseSink('siem', 'replica-a', T0 + 1, T0 + 30_000, 0), {
        name: 'siem',
        position: 10,
        attempts: 0,
        lastError: null,
      });
      await store.saveSink('siem', 'replica-a', { position: 10, attempts: 2, lastError: 'HTTP 503' });
      await store.saveSink('siem', 'replica-b', { position: 99, attempts: 0, lastError: null });
      assert.deepEqual(
        await store.leaseSink('siem', 'replica-a', T0 + 2, T0 + 30_000, 0),
        { name: 'siem', position: 10, attempts: 2, lastError: 'HTTP 503' },
        'a replica that does not hold the lease cannot move the cursor',
      );
      const later = await store.leaseSink('siem', 'replica-b', T0 + 30_000, T0 + 60_000, 0);
      assert.equal(later?.position, 10, 'the next owner resumes where the last one got to');
    });
  });
}

describe('store: sqlite files from before migrations', () => {
  it('opens a broker.db made by the inline schema and keeps its grants', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'jit-store-'));
    after(() => rm(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'broker.db');
    // The schema SqliteStore created inline before versioned migrations (commit 80a7149).
    const old = new DatabaseSync(file);
    old.exec(`
      CREATE TABLE principals (subject TEXT NOT NULL, token_hash TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
      CREATE TABLE grants (id TEXT PRIMARY KEY, subject TEXT NOT NULL, scopes TEXT NOT NULL, reason TEXT, state TEXT NOT NULL,
        credential_hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
        heartbeat_deadline INTEGER NOT NULL, ended_at INTEGER, end_reason TEXT, decision TEXT NOT NULL);
      CREATE INDEX grants_active ON grants (state, expires_at, heartbeat_deadline);
      CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, type TEXT NOT NULL, subject TEXT,
        grant_id TEXT, detail TEXT NOT NULL);
      CREATE INDEX events_grant ON events (grant_id);
      INSERT INTO principals VALUES ('user:admin', 'tokenhash', 1);
      INSERT INTO grants VALUES ('g_old', 'user:admin', '["datasets/train:read"]', NULL, 'active', 'credhash', 1, ${T0}, ${T0}, NULL, NULL, '[]');
    `);
    old.close();
    const store = new SqliteStore(file);
    after(() => store.close());
    const admin = await store.findPrincipalByTokenHash('tokenhash');
    assert.equal(admin?.subject, 'user:admin');
    assert.deepEqual(admin?.roles, ['admin'], 'a token from before roles is an admin token');
    assert.match(admin?.tokenId ?? '', /^tok_[0-9a-f]{20}$/);
    assert.deepEqual((await store.getGrant('g_old'))?.scopes, ['datasets/train:read']);
    assert.deepEqual(
      (await store.expireDue(T0, 10)).map((record) => record.id),
      ['g_old'],
    );
  });
});
