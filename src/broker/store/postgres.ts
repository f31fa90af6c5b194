import pg from 'pg';
import { BrokerUnreachableError, JitError, UsageError } from '../../core/errors.ts';
import type { GrantState } from '../../core/grant.ts';
import type { Checkpoint } from '../audit/chain.ts';
import { outcomeOf } from '../audit/chain.ts';
import { MIGRATIONS_TABLE, pendingMigrations } from './migrations.ts';
import {
  type AlertHistoryQuery,
  type ApprovalRecord,
  type AuditEvent,
  type AuditQuery,
  type AuditRow,
  approvalFromRow,
  auditRowFromRow,
  auditWhere,
  type BrokerStore,
  CHAIN_COLUMNS,
  type ChainHead,
  chainRowFromValues,
  checkpointFromRow,
  type DeprovisionRecord,
  deprovisionFromRow,
  EVENT_COLUMNS,
  EXPIRE_BATCH,
  eventFromRow,
  eventValues,
  GRANT_COLUMNS,
  type GrantEvent,
  type GrantRecord,
  grantFromRow,
  grantValues,
  HISTORY_SQL,
  type PastRecord,
  PRINCIPAL_COLUMNS,
  type PrincipalRecord,
  pastFromRow,
  principalFromRow,
  principalValues,
  SESSION_COLUMNS,
  type SealOptions,
  type SealPlan,
  type SessionRecord,
  type SinkCursor,
  sessionFromRow,
  sessionValues,
  sinkFromRow,
  type UnsealedRow,
  unsealedFromRow,
} from './store.ts';

/** Any fixed 64-bit number: every replica takes the same advisory lock to migrate. */
const MIGRATION_LOCK = 7_316_245_019;
/** The lock the one replica sealing the audit chain holds (try-lock: the others skip their turn). */
const SEAL_LOCK = 7_316_245_020;

/** A changed grant's scopes as the events table's scope column: space-separated, in order. */
const SCOPE_OF = (alias: string) =>
  `(SELECT string_agg(value, ' ' ORDER BY ordinality) FROM jsonb_array_elements_text(${alias}.scopes) WITH ORDINALITY)`;

/**
 * `update` (an UPDATE ... RETURNING *) with, when given, the audit event about the row it changed
 * inserted by the same statement: parameters $n.. after the update's own.
 */
function withEvent(update: string, params: unknown[], at: number, event: GrantEvent | undefined): [string, unknown[]] {
  if (!event) return [update, params];
  const n = params.length;
  const by = event.detail.by;
  return [
    `WITH changed AS (${update}), audited AS (
       INSERT INTO events (${EVENT_COLUMNS.join(', ')})
       SELECT $${n + 1}, $${n + 2}, COALESCE($${n + 3}, changed.subject), changed.subject, changed.id, ${SCOPE_OF('changed')}, $${n + 4}, $${n + 5}
       FROM changed
     )
     SELECT * FROM changed`,
    [...params, at, event.type, event.actor ?? (typeof by === 'string' ? by : null), outcomeOf(event.type), JSON.stringify(event.detail)],
  ];
}

/** The `system` events of the grants a sweep statement ended (its `ended` CTE), inserted by the same statement. */
const SYSTEM_ENDS = `audited AS (
  INSERT INTO events (${EVENT_COLUMNS.join(', ')})
  SELECT $1, 'grant.' || ended.state, 'system', ended.subject, ended.id, ${SCOPE_OF('ended')}, 'ok',
    json_build_object('reason', ended.end_reason, 'by', 'system')::text
  FROM ended ORDER BY ended.id
)`;

type Row = Record<string, unknown>;

// BIGINT columns arrive as strings (pg keeps 64 bits exact); epoch milliseconds fit a double.
/** JSON columns arrive decoded from JSONB. */
const asDecoded = (value: unknown): unknown => value;
const toGrant = (row: Row): GrantRecord => grantFromRow({ row, json: asDecoded });
const toPrincipal = (row: Row): PrincipalRecord => principalFromRow({ row, json: asDecoded });
/** events.detail is TEXT (the chain hashes its exact text). */
const fromText = (value: unknown): unknown => JSON.parse(String(value));

/** Where the URL points, without its password, for error messages. */
export function describeDatabase(url: string): string {
  try {
    const parsed = new URL(url);
    return `PostgreSQL at ${parsed.host || 'localhost'}${parsed.pathname}`;
  } catch {
    return 'PostgreSQL';
  }
}

/** One clear line for a store that cannot be opened, instead of pg's stack. */
function openError(error: unknown, url: string): unknown {
  if (error instanceof JitError || !(error instanceof Error)) return error;
  const where = describeDatabase(url);
  if (error instanceof pg.DatabaseError) {
    // The server answered: wrong database, role or password, or missing privileges.
    return new UsageError(`${where} refused the broker: ${error.message}`, {
      code: 'store_refused',
      hint: 'check the database, user and password in the store URL (broker.yaml store.url or the variable store.urlEnv names)',
      cause: error,
    });
  }
  const reason = (error as NodeJS.ErrnoException).code ?? error.message;
  return new BrokerUnreachableError(`cannot reach the store, ${where} (${reason})`, {
    code: 'store_unreachable',
    hint: 'check that PostgreSQL is running and that the store URL in broker.yaml (or its urlEnv variable) points at it',
    cause: error,
  });
}

/**
 * The shared store for several broker replicas: PostgreSQL through a pg Pool. Every state change
 * is one conditional statement, so the database alone decides which replica wins a race.
 */
export class PostgresStore implements BrokerStore {
  readonly #pool: pg.Pool;

  private constructor(pool: pg.Pool) {
    this.#pool = pool;
  }

  /** Connects and migrates; a database that cannot be reached is a BrokerUnreachableError. */
  static async open(url: string, options: { maxConnections?: number } = {}): Promise<PostgresStore> {
    const pool = new pg.Pool({ connectionString: url, max: options.maxConnections ?? 10, connectionTimeoutMillis: 10_000 });
    // An idle client losing its server must not crash the broker; the next query reports it.
    pool.on('error', () => {});
    const store = new PostgresStore(pool);
    try {
      await store.#migrate(describeDatabase(url));
    } catch (error) {
      await pool.end();
      throw openError(error, url);
    }
    return store;
  }

  /** Applies pending migrations under an advisory lock, so replicas starting together queue. */
  async #migrate(where: string): Promise<void> {
    const client = await this.#pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await client.query(MIGRATIONS_TABLE);
      const applied = (await client.query('SELECT version FROM schema_migrations')).rows.map((row) => Number(row.version));
      for (const migration of pendingMigrations(applied, where)) {
        await client.query(migration.postgres);
        await client.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [
          migration.version,
          migration.name,
          Date.now(),
        ]);
      }
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      throw error;
    } finally {
      client.release();
    }
  }

  async #rows(sql: string, params: unknown[] = []): Promise<Row[]> {
    return (await this.#pool.query(sql, params)).rows as Row[];
  }

  async addPrincipal(principal: PrincipalRecord, event?: AuditEvent): Promise<void> {
    const values = PRINCIPAL_COLUMNS.map((_, index) => `$${index + 1}`).join(', ');
    const insert = `INSERT INTO principals (${PRINCIPAL_COLUMNS.join(', ')}) VALUES (${values})`;
    if (!event) {
      await this.#rows(insert, principalValues(principal));
      return;
    }
    // One statement, so the token and its audit event commit together or not at all.
    await this.#rows(`WITH added AS (${insert} RETURNING token_id) ${this.#eventInsert(PRINCIPAL_COLUMNS.length, 'added')}`, [
      ...principalValues(principal),
      ...eventValues(event),
    ]);
  }

  async findPrincipalByTokenHash(tokenHash: string): Promise<PrincipalRecord | undefined> {
    const [row] = await this.#rows('SELECT * FROM principals WHERE token_hash = $1 AND revoked_at IS NULL', [tokenHash]);
    return row ? toPrincipal(row) : undefined;
  }

  async listPrincipals(): Promise<PrincipalRecord[]> {
    return (await this.#rows('SELECT * FROM principals ORDER BY created_at, token_id')).map(toPrincipal);
  }

  /** One statement: the conditional update and its audit event commit together, and only one revoker wins. */
  async revokePrincipal(tokenId: string, at: number, event: Omit<AuditEvent, 'subject'>): Promise<PrincipalRecord | undefined> {
    const [row] = await this.#rows(
      `WITH revoked AS (
         UPDATE principals SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL RETURNING *
       ), audited AS (
         INSERT INTO events (${EVENT_COLUMNS.join(', ')})
         SELECT $3, $4, COALESCE($5, revoked.subject), revoked.subject, $6, NULL, $7, $8 FROM revoked
       )
       SELECT * FROM revoked`,
      [
        at,
        tokenId,
        event.at,
        event.type,
        event.actor ?? (typeof event.detail.by === 'string' ? event.detail.by : null),
        event.grantId,
        event.outcome ?? outcomeOf(event.type),
        JSON.stringify(event.detail),
      ],
    );
    return row ? toPrincipal(row) : undefined;
  }

  async insertGrant(grant: GrantRecord, event?: AuditEvent): Promise<void> {
    const values = GRANT_COLUMNS.map((_, index) => `$${index + 1}`).join(', ');
    const insert = `INSERT INTO grants (${GRANT_COLUMNS.join(', ')}) VALUES (${values})`;
    if (!event) {
      await this.#rows(insert, grantValues(grant));
      return;
    }
    // One statement, so the grant and its audit event commit together or not at all.
    await this.#rows(`WITH issued AS (${insert} RETURNING id) ${this.#eventInsert(GRANT_COLUMNS.length, 'issued')}`, [
      ...grantValues(grant),
      ...eventValues(event),
    ]);
  }

  /** An event insert whose parameters follow `after` others, run only when CTE `source` produced a row. */
  #eventInsert(after: number, source: string): string {
    const values = EVENT_COLUMNS.map((_, index) => `$${after + index + 1}`).join(', ');
    return `INSERT INTO events (${EVENT_COLUMNS.join(', ')}) SELECT ${values} FROM ${source}`;
  }

  async getGrant(id: string): Promise<GrantRecord | undefined> {
    const [row] = await this.#rows('SELECT * FROM grants WHERE id = $1', [id]);
    return row ? toGrant(row) : undefined;
  }

  async findGrantByCredentialHash(credentialHash: string): Promise<GrantRecord | undefined> {
    const [row] = await this.#rows('SELECT * FROM grants WHERE credential_hash = $1', [credentialHash]);
    return row ? toGrant(row) : undefined;
  }

  async listGrants(filter: { subject?: string; states?: readonly GrantState[] }): Promise<GrantRecord[]> {
    const clauses: string[] = [];
    const params: unknown[] = [];
    if (filter.subject !== undefined) {
      params.push(filter.subject);
      clauses.push(`subject = $${params.length}`);
    }
    if (filter.states && filter.states.length > 0) {
      params.push([...filter.states]);
      clauses.push(`state = ANY($${params.length}::text[])`);
    }
    const where = clauses.length > 0 ? `WHERE ${clauses.join(' AND ')}` : '';
    return (await this.#rows(`SELECT * FROM grants ${where} ORDER BY created_at DESC`, params)).map(toGrant);
  }

  async extendHeartbeat(id: string, deadline: number, now: number): Promise<GrantRecord | undefined> {
    const [row] = await this.#rows(
      `UPDATE grants SET heartbeat_deadline = $1
       WHERE id = $2 AND state IN ('active', 'pending') AND expires_at > $3 AND heartbeat_deadline > $3 RETURNING *`,
      [deadline, id, now],
    );
    return row ? toGrant(row) : undefined;
  }

  async endGrant(
    id: string,
    state: GrantState,
    reason: string,
    at: number,
    from: 'active' | 'pending' = 'active',
    event?: GrantEvent,
  ): Promise<GrantRecord | undefined> {
    const [row] = await this.#rows(
      ...withEvent(
        'UPDATE grants SET state = $1, end_reason = $2, ended_at = $3 WHERE id = $4 AND state = $5 RETURNING *',
        [state, reason, at, id, from],
        at,
        event,
      ),
    );
    return row ? toGrant(row) : undefined;
  }

  async activateGrant(id: string, times: { activatedAt: number; expiresAt: number }, event?: GrantEvent): Promise<GrantRecord | undefined> {
    const [row] = await this.#rows(
      ...withEvent(
        `UPDATE grants SET state = 'active', activated_at = $1, expires_at = $2
         WHERE id = $3 AND state = 'pending' AND approval_deadline > $1 RETURNING *`,
        [times.activatedAt, times.expiresAt, id],
        times.activatedAt,
        event,
      ),
    );
    return row ? toGrant(row) : undefined;
  }

  async renewGrant(id: string, expiresAt: number, now: number, event?: GrantEvent): Promise<GrantRecord | undefined> {
    const [row] = await this.#rows(
      ...withEvent(
        `UPDATE grants SET expires_at = $1
         WHERE id = $2 AND state = 'active' AND expires_at > $3 AND heartbeat_deadline > $3 AND expires_at < $1 RETURNING *`,
        [expiresAt, id, now],
        now,
        event,
      ),
    );
    return row ? toGrant(row) : undefined;
  }

  async addApproval(approval: ApprovalRecord, event?: AuditEvent): Promise<boolean> {
    const insert = `INSERT INTO approvals (grant_id, approver, verdict, reason, at) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (grant_id, approver) DO NOTHING RETURNING grant_id`;
    const values = [approval.grantId, approval.approver, approval.verdict, approval.reason, approval.at];
    // One statement: the verdict and its audit event commit together, or neither.
    const rows = event
      ? await this.#rows(
          `WITH added AS (${insert}), audited AS (${this.#eventInsert(values.length, 'added')}) SELECT grant_id FROM added`,
          [...values, ...eventValues(event)],
        )
      : await this.#rows(insert, values);
    return rows.length === 1;
  }

  async listApprovals(grantId: string): Promise<ApprovalRecord[]> {
    return (await this.#rows('SELECT * FROM approvals WHERE grant_id = $1 ORDER BY at, approver', [grantId])).map(approvalFromRow);
  }

  /** As expireDue: disjoint batches across replicas, each timed-out grant returned once. */
  async timeOutPending(now: number, limit = EXPIRE_BATCH): Promise<GrantRecord[]> {
    const rows = await this.#rows(
      `WITH due AS MATERIALIZED (
         SELECT id FROM grants WHERE state = 'pending' AND (approval_deadline <= $1 OR heartbeat_deadline <= $1)
         LIMIT $2 FOR UPDATE SKIP LOCKED
       ), ended AS (
         UPDATE grants SET ended_at = $1,
           state = CASE WHEN grants.approval_deadline <= $1 THEN 'timed-out' ELSE 'cancelled' END,
           end_reason = CASE WHEN grants.approval_deadline <= $1 THEN 'approval timeout' ELSE 'requester stopped waiting' END
         FROM due WHERE grants.id = due.id AND grants.state = 'pending'
         RETURNING grants.*
       ), ${SYSTEM_ENDS}
       SELECT * FROM ended`,
      [now, limit],
    );
    return rows.map(toGrant);
  }

  /**
   * SKIP LOCKED lets replicas sweeping at once take disjoint batches instead of queueing on the
   * same rows. The batch is a MATERIALIZED CTE because the planner may otherwise re-run an
   * `IN (... LIMIT n)` subquery per row and end far more than n. The outer `state = 'active'`
   * is what makes it exactly once: a row another replica ended after this statement's snapshot
   * is re-checked against it and left alone.
   */
  async expireDue(now: number, limit = EXPIRE_BATCH): Promise<GrantRecord[]> {
    const rows = await this.#rows(
      `WITH due AS MATERIALIZED (
         SELECT id FROM grants WHERE state = 'active' AND LEAST(expires_at, heartbeat_deadline) <= $1
         LIMIT $2 FOR UPDATE SKIP LOCKED
       ), ended AS (
         UPDATE grants SET state = 'expired', ended_at = $1,
           end_reason = CASE WHEN grants.expires_at <= $1 THEN 'ttl' ELSE 'heartbeat' END
         FROM due WHERE grants.id = due.id AND grants.state = 'active'
         RETURNING grants.*
       ), ${SYSTEM_ENDS}
       SELECT * FROM ended`,
      [now, limit],
    );
    return rows.map(toGrant);
  }

  async saveDeprovision(record: DeprovisionRecord): Promise<void> {
    await this.#rows(
      `INSERT INTO deprovisions (grant_id, resources, attempts, next_attempt_at, last_error, created_at, done_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7)
       ON CONFLICT (grant_id) DO UPDATE SET attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at,
         last_error = excluded.last_error, done_at = excluded.done_at`,
      [
        record.grantId,
        JSON.stringify(record.resources),
        record.attempts,
        record.nextAttemptAt,
        record.lastError,
        record.createdAt,
        record.doneAt,
      ],
    );
  }

  async getDeprovision(grantId: string): Promise<DeprovisionRecord | undefined> {
    const [row] = await this.#rows('SELECT * FROM deprovisions WHERE grant_id = $1', [grantId]);
    return row ? deprovisionFromRow({ row, json: asDecoded }) : undefined;
  }

  /** As expireDue: replicas claiming at once take disjoint rows (SKIP LOCKED). */
  async claimDeprovisions(now: number, leaseUntil: number, limit: number): Promise<DeprovisionRecord[]> {
    const rows = await this.#rows(
      `WITH due AS MATERIALIZED (
         SELECT grant_id FROM deprovisions WHERE done_at IS NULL AND next_attempt_at <= $1
         LIMIT $2 FOR UPDATE SKIP LOCKED
       )
       UPDATE deprovisions SET next_attempt_at = $3
       FROM due WHERE deprovisions.grant_id = due.grant_id AND deprovisions.done_at IS NULL AND deprovisions.next_attempt_at <= $1
       RETURNING deprovisions.*`,
      [now, limit, leaseUntil],
    );
    return rows.map((row) => deprovisionFromRow({ row, json: asDecoded }));
  }

  async addUsage(grantId: string, requests: number, bytes: number): Promise<{ requests: number; bytes: number }> {
    const [row] = await this.#rows(
      `INSERT INTO usage (grant_id, requests, bytes) VALUES ($1, $2, $3)
       ON CONFLICT (grant_id) DO UPDATE SET requests = usage.requests + excluded.requests, bytes = usage.bytes + excluded.bytes
       RETURNING requests, bytes`,
      [grantId, requests, bytes],
    );
    return { requests: Number(row?.requests ?? 0), bytes: Number(row?.bytes ?? 0) };
  }

  async appendEvent(event: AuditEvent): Promise<void> {
    await this.appendEvents([event]);
  }

  async appendEvents(events: readonly AuditEvent[]): Promise<void> {
    await insertEvents(this.#pool, events);
  }

  async listEvents(filter: { grantId?: string }): Promise<AuditEvent[]> {
    const rows =
      filter.grantId === undefined
        ? await this.#rows('SELECT * FROM events ORDER BY seq')
        : await this.#rows('SELECT * FROM events WHERE grant_id = $1 ORDER BY seq', [filter.grantId]);
    return rows.map((row) => eventFromRow({ row, json: fromText }));
  }

  /** One transaction under the sealing try-lock; a replica that does not get it skips (undefined). */
  async sealEvents(
    limit: number,
    plan: (head: ChainHead, rows: UnsealedRow[]) => SealPlan,
    options: SealOptions = {},
  ): Promise<number | undefined> {
    const client = await this.#pool.connect();
    try {
      await client.query('BEGIN');
      const [lock] = (await client.query('SELECT pg_try_advisory_xact_lock($1) AS locked', [SEAL_LOCK])).rows;
      if (!lock?.locked) {
        await client.query('ROLLBACK');
        return undefined;
      }
      const rows = (await client.query('SELECT * FROM events WHERE position IS NULL ORDER BY seq LIMIT $1', [limit])).rows.map(
        unsealedFromRow,
      );
      if (rows.length === 0 && !options.evenIfNone) {
        await client.query('ROLLBACK');
        return 0;
      }
      const { sealed, checkpoint } = plan(await this.#head(client), rows);
      if (sealed.length === 0 && !checkpoint) {
        await client.query('ROLLBACK');
        return 0;
      }
      await client.query(
        `UPDATE events SET position = v.position, hash = v.hash, detail = v.detail
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS v(seq, position, hash, detail)
         WHERE events.seq = v.seq AND events.position IS NULL`,
        [sealed.map((row) => row.seq), sealed.map((row) => row.position), sealed.map((row) => row.hash), sealed.map((row) => row.detail)],
      );
      if (checkpoint) {
        await client.query('INSERT INTO audit_checkpoints (position, hash, at, key_id, signature) VALUES ($1, $2, $3, $4, $5)', [
          checkpoint.position,
          checkpoint.hash,
          checkpoint.at,
          checkpoint.keyId,
          checkpoint.signature,
        ]);
      }
      if (sealed.length > 0 && options.derive) {
        // Through this transaction: it sees its own batch, and the next step waits for the lock.
        await insertEvents(client, await options.derive({ alertHistory: (query) => alertHistoryVia(client, query) }));
      }
      await client.query('COMMIT');
      return sealed.length;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      throw error;
    } finally {
      client.release();
    }
  }

  async #head(client: pg.PoolClient | pg.Pool): Promise<ChainHead> {
    const [last] = (await client.query('SELECT position, hash FROM events WHERE position IS NOT NULL ORDER BY position DESC LIMIT 1')).rows;
    const [checkpoint] = (await client.query('SELECT * FROM audit_checkpoints ORDER BY position DESC LIMIT 1')).rows;
    return {
      position: last ? Number(last.position) : 0,
      hash: last ? String(last.hash) : '',
      checkpoint: checkpoint ? checkpointFromRow(checkpoint) : undefined,
    };
  }

  alertHistory(query: AlertHistoryQuery): Promise<PastRecord[]> {
    return alertHistoryVia(this.#pool, query);
  }

  chainHead(): Promise<ChainHead> {
    return this.#head(this.#pool);
  }

  async queryAudit(query: AuditQuery): Promise<AuditRow[]> {
    const { where, params } = auditWhere(query);
    let index = 0;
    const numbered = where.map((clause) => clause.replace(/\?/g, () => `$${++index}`));
    const rows = await this.#rows(`SELECT * FROM events WHERE ${numbered.join(' AND ')} ORDER BY position LIMIT $${index + 1}`, [
      ...params,
      query.limit,
    ]);
    return rows.map(auditRowFromRow);
  }

  /** Rows as arrays, from a statement each connection prepares once. */
  async readChain(afterPosition: number, limit: number): Promise<AuditRow[]> {
    const result = await this.#pool.query<unknown[]>({
      name: 'jit-read-chain',
      text: `SELECT ${CHAIN_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2`,
      values: [afterPosition, limit],
      rowMode: 'array',
    });
    return result.rows.map(chainRowFromValues);
  }

  async listCheckpoints(range?: { from: number; to: number }): Promise<Checkpoint[]> {
    const rows = range
      ? await this.#rows('SELECT * FROM audit_checkpoints WHERE position BETWEEN $1 AND $2 ORDER BY position', [range.from, range.to])
      : await this.#rows('SELECT * FROM audit_checkpoints ORDER BY position');
    return rows.map(checkpointFromRow);
  }

  async unsealed(): Promise<{ count: number; oldestAt: number | null }> {
    const [row] = await this.#rows('SELECT count(*) AS count, min(at) AS oldest FROM events WHERE position IS NULL');
    return { count: Number(row?.count ?? 0), oldestAt: row?.oldest === null || row?.oldest === undefined ? null : Number(row.oldest) };
  }

  async leaseSink(name: string, owner: string, now: number, leaseUntil: number, start: number): Promise<SinkCursor | undefined> {
    const [row] = await this.#rows(
      `INSERT INTO audit_sinks (name, position, owner, lease_until) VALUES ($1, $2, $3, $4)
       ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
       WHERE audit_sinks.owner = excluded.owner OR audit_sinks.lease_until <= $5
       RETURNING *`,
      [name, start, owner, leaseUntil, now],
    );
    return row ? sinkFromRow(row) : undefined;
  }

  async saveSink(name: string, owner: string, update: { position: number; attempts: number; lastError: string | null }): Promise<void> {
    await this.#rows('UPDATE audit_sinks SET position = $1, attempts = $2, last_error = $3 WHERE name = $4 AND owner = $5', [
      update.position,
      update.attempts,
      update.lastError,
      name,
      owner,
    ]);
  }

  /** One statement: expired sessions go as the new one comes. */
  async addSession(session: SessionRecord): Promise<void> {
    await this.#rows(
      `WITH forgotten AS (DELETE FROM oidc_sessions WHERE expires_at < $6)
       INSERT INTO oidc_sessions (${SESSION_COLUMNS.join(', ')}) VALUES (${SESSION_COLUMNS.map((_, index) => `$${index + 1}`).join(', ')})`,
      sessionValues(session),
    );
  }

  async findSessionByTokenHash(tokenHash: string): Promise<SessionRecord | undefined> {
    const [row] = await this.#rows('SELECT * FROM oidc_sessions WHERE token_hash = $1', [tokenHash]);
    return row ? sessionFromRow({ row, json: asDecoded }) : undefined;
  }

  async close(): Promise<void> {
    if (!this.#pool.ended) await this.#pool.end();
  }
}

async function insertEvents(client: pg.Pool | pg.PoolClient, events: readonly AuditEvent[]): Promise<void> {
  if (events.length === 0) return;
  const width = EVENT_COLUMNS.length;
  const rows = events.map((_, row) => `(${EVENT_COLUMNS.map((__, column) => `$${row * width + column + 1}`).join(', ')})`);
  await client.query(`INSERT INTO events (${EVENT_COLUMNS.join(', ')}) VALUES ${rows.join(', ')}`, events.flatMap(eventValues));
}

/** BrokerStore.alertHistory through `client`: the pool, or a sealing transaction. */
async function alertHistoryVia(client: pg.Pool | pg.PoolClient, query: AlertHistoryQuery): Promise<PastRecord[]> {
  const { columns, grantMarks, denied, alerts } = HISTORY_SQL;
  const parts: string[] = [];
  const params: unknown[] = [];
  const param = (value: unknown) => `$${params.push(value)}`;
  if (query.grantIds.length > 0) {
    parts.push(`SELECT ${columns} FROM events WHERE grant_id = ANY(${param(query.grantIds)}::text[]) AND ${grantMarks}`);
  }
  if (query.subjects.length > 0) {
    const subjects = param(query.subjects.map((wanted) => wanted.subject));
    const limits = param(query.subjects.map((wanted) => wanted.denials));
    parts.push(
      `SELECT last.* FROM unnest(${subjects}::text[], ${limits}::int[]) AS wanted(subject, denials), LATERAL (
         SELECT ${columns} FROM events WHERE events.subject = wanted.subject AND ${denied} ORDER BY position DESC LIMIT wanted.denials) AS last`,
      `SELECT last.* FROM unnest(${subjects}::text[]) AS wanted(subject), LATERAL (
         SELECT ${columns} FROM events WHERE events.subject = wanted.subject AND type = 'alert.denied_burst' AND ${alerts}
         ORDER BY seq DESC LIMIT 1) AS last`,
    );
  }
  if (parts.length === 0) return [];
  return (await client.query(`${parts.join(' UNION ALL ')} ORDER BY seq`, params)).rows.map(pastFromRow);
}
