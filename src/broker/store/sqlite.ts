import { chmodSync } from 'node:fs';
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import type { GrantState } from '../../core/grant.ts';
import type { Checkpoint } from '../audit/chain.ts';
import { MIGRATIONS_TABLE, pendingMigrations } from './migrations.ts';
import {
  type AlertHistoryQuery,
  type ApprovalRecord,
  type AuditEvent,
  type AuditQuery,
  type AuditRow,
  aboutGrant,
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
  systemEnd,
  type UnsealedRow,
  unsealedFromRow,
} from './store.ts';

type Row = Record<string, SQLInputValue>;

/** JSON columns are TEXT on SQLite. */
const fromText = (value: unknown): unknown => JSON.parse(String(value));
const toGrant = (row: Row): GrantRecord => grantFromRow({ row, json: fromText });
const toPrincipal = (row: Row): PrincipalRecord => principalFromRow({ row, json: fromText });

/**
 * The seq after which events are unsealed. SQLite has one writer, so events commit in seq order
 * and the sealed ones are always a prefix: no index of unsealed rows is needed (migration 9).
 */
const AFTER_LAST_SEALED = `coalesce((SELECT seq FROM events WHERE position = (SELECT max(position) FROM events WHERE position IS NOT NULL)), 0)`;

/** The embedded store: one SQLite file in WAL mode, through node:sqlite. */
export class SqliteStore implements BrokerStore {
  readonly #db: DatabaseSync;
  readonly #statements = new Map<string, StatementSync>();

  constructor(file: string) {
    this.#db = new DatabaseSync(file);
    // Token and credential hashes are in here: readable by the broker's user only. SQLite gives
    // its -wal and -shm files the same mode.
    if (file !== ':memory:') chmodSync(file, 0o600);
    this.#db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;');
    this.#migrate(file);
  }

  /** Brings the file to the current schema in one transaction; IMMEDIATE so two openers queue. */
  #migrate(file: string): void {
    this.#statement('BEGIN IMMEDIATE').run();
    try {
      this.#db.exec(MIGRATIONS_TABLE);
      const applied = this.#db
        .prepare('SELECT version FROM schema_migrations')
        .all()
        .map((row) => Number(row.version));
      for (const migration of pendingMigrations(applied, file)) {
        this.#db.exec(migration.sqlite);
        this.#db
          .prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)')
          .run(migration.version, migration.name, Date.now());
      }
      this.#statement('COMMIT').run();
    } catch (error) {
      this.#statement('ROLLBACK').run();
      this.#db.close();
      throw error;
    }
  }

  async addPrincipal(principal: PrincipalRecord, event?: AuditEvent): Promise<void> {
    const insert = this.#statement(
      `INSERT INTO principals (${PRINCIPAL_COLUMNS.join(', ')}) VALUES (${PRINCIPAL_COLUMNS.map(() => '?').join(', ')})`,
    );
    this.#transaction(() => {
      insert.run(...principalValues(principal));
      if (event) this.#insertEvent(event);
    });
  }

  async findPrincipalByTokenHash(tokenHash: string): Promise<PrincipalRecord | undefined> {
    const row = this.#statement('SELECT * FROM principals WHERE token_hash = ? AND revoked_at IS NULL').get(tokenHash);
    return row ? toPrincipal(row) : undefined;
  }

  async listPrincipals(): Promise<PrincipalRecord[]> {
    return this.#statement('SELECT * FROM principals ORDER BY created_at, token_id').all().map(toPrincipal);
  }

  async revokePrincipal(tokenId: string, at: number, event: Omit<AuditEvent, 'subject'>): Promise<PrincipalRecord | undefined> {
    const revoke = this.#statement('UPDATE principals SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL RETURNING *');
    return this.#transaction(() => {
      const row = revoke.get(at, tokenId);
      if (!row) return undefined;
      const principal = toPrincipal(row);
      this.#insertEvent({ ...event, subject: principal.subject });
      return principal;
    });
  }

  /** Runs `work` in one IMMEDIATE transaction: all of it commits, or none. */
  #transaction<T>(work: () => T): T {
    this.#statement('BEGIN IMMEDIATE').run();
    try {
      const result = work();
      this.#statement('COMMIT').run();
      return result;
    } catch (error) {
      this.#statement('ROLLBACK').run();
      throw error;
    }
  }

  async insertGrant(grant: GrantRecord, event?: AuditEvent): Promise<void> {
    const insert = this.#statement(`INSERT INTO grants (${GRANT_COLUMNS.join(', ')}) VALUES (${GRANT_COLUMNS.map(() => '?').join(', ')})`);
    if (!event) {
      insert.run(...grantValues(grant));
      return;
    }
    this.#statement('BEGIN IMMEDIATE').run();
    try {
      insert.run(...grantValues(grant));
      this.#insertEvent(event);
      this.#statement('COMMIT').run();
    } catch (error) {
      this.#statement('ROLLBACK').run();
      throw error;
    }
  }

  async getGrant(id: string): Promise<GrantRecord | undefined> {
    const row = this.#statement('SELECT * FROM grants WHERE id = ?').get(id);
    return row ? toGrant(row) : undefined;
  }

  async findGrantByCredentialHash(credentialHash: string): Promise<GrantRecord | undefined> {
    const row = this.#statement('SELECT * FROM grants WHERE credential_hash = ?').get(credentialHash);
    return row ? toGrant(row) : undefined;
  }

  async listGrants(filter: { subject?: string; states?: readonly GrantState[] }): Promise<GrantRecord[]> {
    const clauses: string[] = [];
    const params: SQLInputValue[] = [];
    if (filter.subject !== undefined) {
      clauses.push('subject = ?');
      params.push(filter.subject);
    }
    if (filter.states && filter.states.length > 0) {
      clauses.push(`state IN (${filter.states.map(() => '?').join(', ')})`);
      params.push(...filter.states);
    }
    const where = clauses.length > 0 ? `WHERE ${clauses.join(' AND ')}` : '';
    return this.#statement(`SELECT * FROM grants ${where} ORDER BY created_at DESC`)
      .all(...params)
      .map(toGrant);
  }

  async extendHeartbeat(id: string, deadline: number, now: number): Promise<GrantRecord | undefined> {
    const row = this.#statement(
      `UPDATE grants SET heartbeat_deadline = ?
         WHERE id = ? AND state IN ('active', 'pending') AND expires_at > ? AND heartbeat_deadline > ? RETURNING *`,
    ).get(deadline, id, now, now);
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
    const update = this.#statement(`UPDATE grants SET state = ?, end_reason = ?, ended_at = ? WHERE id = ? AND state = ? RETURNING *`);
    return this.#changeGrant(() => update.get(state, reason, at, id, from), at, event);
  }

  /** A conditional grant update and, when it changed a row, its audit event: one transaction. */
  #changeGrant(update: () => Row | undefined, at: number, event: GrantEvent | undefined): GrantRecord | undefined {
    if (!event) {
      const row = update();
      return row ? toGrant(row) : undefined;
    }
    return this.#transaction(() => {
      const row = update();
      if (!row) return undefined;
      const grant = toGrant(row);
      this.#insertEvent(aboutGrant(grant, at, event));
      return grant;
    });
  }

  async activateGrant(id: string, times: { activatedAt: number; expiresAt: number }, event?: GrantEvent): Promise<GrantRecord | undefined> {
    const update = this.#statement(
      `UPDATE grants SET state = 'active', activated_at = ?, expires_at = ?
         WHERE id = ? AND state = 'pending' AND approval_deadline > ? RETURNING *`,
    );
    return this.#changeGrant(() => update.get(times.activatedAt, times.expiresAt, id, times.activatedAt), times.activatedAt, event);
  }

  async renewGrant(id: string, expiresAt: number, now: number, event?: GrantEvent): Promise<GrantRecord | undefined> {
    const update = this.#statement(
      `UPDATE grants SET expires_at = ?
         WHERE id = ? AND state = 'active' AND expires_at > ? AND heartbeat_deadline > ? AND expires_at < ? RETURNING *`,
    );
    return this.#changeGrant(() => update.get(expiresAt, id, now, now, expiresAt), now, event);
  }

  async addApproval(approval: ApprovalRecord, event?: AuditEvent): Promise<boolean> {
    const insert = this.#statement(
      `INSERT INTO approvals (grant_id, approver, verdict, reason, at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (grant_id, approver) DO NOTHING`,
    );
    return this.#transaction(() => {
      const added = Number(insert.run(approval.grantId, approval.approver, approval.verdict, approval.reason, approval.at).changes) === 1;
      if (added && event) this.#insertEvent(event);
      return added;
    });
  }

  async listApprovals(grantId: string): Promise<ApprovalRecord[]> {
    return this.#statement('SELECT * FROM approvals WHERE grant_id = ? ORDER BY at, approver').all(grantId).map(approvalFromRow);
  }

  async timeOutPending(now: number, limit = EXPIRE_BATCH): Promise<GrantRecord[]> {
    const update = this.#statement(
      `UPDATE grants SET ended_at = ?,
           state = CASE WHEN approval_deadline <= ? THEN 'timed-out' ELSE 'cancelled' END,
           end_reason = CASE WHEN approval_deadline <= ? THEN 'approval timeout' ELSE 'requester stopped waiting' END
         WHERE state = 'pending' AND id IN (
           SELECT id FROM grants WHERE state = 'pending' AND (approval_deadline <= ? OR heartbeat_deadline <= ?) LIMIT ?
         ) RETURNING *`,
    );
    return this.#endBySystem(() => update.all(now, now, now, now, now, limit), now);
  }

  /** Grants a sweep ended, with one `system` event each, in one transaction. */
  #endBySystem(update: () => Row[], now: number): GrantRecord[] {
    return this.#transaction(() => {
      const ended = update().map(toGrant);
      for (const grant of ended) this.#insertEvent(aboutGrant(grant, now, systemEnd(grant)));
      return ended;
    });
  }

  async expireDue(now: number, limit = EXPIRE_BATCH): Promise<GrantRecord[]> {
    // One statement, and SQLite has one writer at a time: a grant ends in exactly one sweep.
    const update = this.#statement(
      `UPDATE grants SET state = 'expired', ended_at = ?,
           end_reason = CASE WHEN expires_at <= ? THEN 'ttl' ELSE 'heartbeat' END
         WHERE state = 'active' AND id IN (
           SELECT id FROM grants WHERE state = 'active' AND min(expires_at, heartbeat_deadline) <= ? LIMIT ?
         ) RETURNING *`,
    );
    return this.#endBySystem(() => update.all(now, now, now, limit), now);
  }

  async saveDeprovision(record: DeprovisionRecord): Promise<void> {
    this.#statement(
      `INSERT INTO deprovisions (grant_id, resources, attempts, next_attempt_at, last_error, created_at, done_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (grant_id) DO UPDATE SET attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at,
           last_error = excluded.last_error, done_at = excluded.done_at`,
    ).run(
      record.grantId,
      JSON.stringify(record.resources),
      record.attempts,
      record.nextAttemptAt,
      record.lastError,
      record.createdAt,
      record.doneAt,
    );
  }

  async getDeprovision(grantId: string): Promise<DeprovisionRecord | undefined> {
    const row = this.#statement('SELECT * FROM deprovisions WHERE grant_id = ?').get(grantId);
    return row ? deprovisionFromRow({ row, json: fromText }) : undefined;
  }

  async claimDeprovisions(now: number, leaseUntil: number, limit: number): Promise<DeprovisionRecord[]> {
    // One statement, one writer at a time: each due row goes to one caller.
    return this.#statement(
      `UPDATE deprovisions SET next_attempt_at = ?
         WHERE grant_id IN (SELECT grant_id FROM deprovisions WHERE done_at IS NULL AND next_attempt_at <= ? LIMIT ?)
         RETURNING *`,
    )
      .all(leaseUntil, now, limit)
      .map((row) => deprovisionFromRow({ row, json: fromText }));
  }

  async addUsage(grantId: string, requests: number, bytes: number): Promise<{ requests: number; bytes: number }> {
    const row = this.#statement(
      `INSERT INTO usage (grant_id, requests, bytes) VALUES (?, ?, ?)
         ON CONFLICT (grant_id) DO UPDATE SET requests = requests + excluded.requests, bytes = bytes + excluded.bytes
         RETURNING requests, bytes`,
    ).get(grantId, requests, bytes);
    return { requests: Number(row?.requests ?? 0), bytes: Number(row?.bytes ?? 0) };
  }

  async appendEvent(event: AuditEvent): Promise<void> {
    this.#insertEvent(event);
  }

  async appendEvents(events: readonly AuditEvent[]): Promise<void> {
    if (events.length === 0) return;
    this.#statement('BEGIN IMMEDIATE').run();
    try {
      for (const event of events) this.#insertEvent(event);
      this.#statement('COMMIT').run();
    } catch (error) {
      this.#statement('ROLLBACK').run();
      throw error;
    }
  }

  #insertEvent(event: AuditEvent): void {
    this.#statement(`INSERT INTO events (${EVENT_COLUMNS.join(', ')}) VALUES (${EVENT_COLUMNS.map(() => '?').join(', ')})`).run(
      ...eventValues(event),
    );
  }

  /** Prepared once per SQL text: compiling a statement costs more than running it. */
  #statement(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#db.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  async listEvents(filter: { grantId?: string }): Promise<AuditEvent[]> {
    const rows =
      filter.grantId === undefined
        ? this.#statement('SELECT * FROM events ORDER BY seq').all()
        : this.#statement('SELECT * FROM events WHERE grant_id = ? ORDER BY seq').all(filter.grantId);
    return rows.map((row) => eventFromRow({ row, json: fromText }));
  }

  async sealEvents(limit: number, plan: (head: ChainHead, rows: UnsealedRow[]) => SealPlan, options: SealOptions = {}): Promise<number> {
    const unsealed = this.#statement(`SELECT * FROM events WHERE seq > ${AFTER_LAST_SEALED} AND position IS NULL ORDER BY seq LIMIT ?`);
    const seal = this.#statement('UPDATE events SET position = ?, hash = ?, detail = ? WHERE seq = ? AND position IS NULL');
    const count = this.#transaction(() => {
      const rows = unsealed.all(limit).map(unsealedFromRow);
      if (rows.length === 0 && !options.evenIfNone) return 0;
      const { sealed, checkpoint } = plan(this.#head(), rows);
      for (const row of sealed) seal.run(row.position, row.hash, row.detail, row.seq);
      if (checkpoint) this.#insertCheckpoint(checkpoint);
      return sealed.length;
    });
    // After the commit: a transaction cannot wait for derive here, and this broker seals alone.
    if (count > 0 && options.derive) await this.appendEvents(await options.derive(this));
    return count;
  }

  async alertHistory(query: AlertHistoryQuery): Promise<PastRecord[]> {
    const { columns, grantMarks, denied, alerts } = HISTORY_SQL;
    const rows: Row[] = [];
    if (query.grantIds.length > 0) {
      const marks = `SELECT ${columns} FROM events WHERE grant_id IN (SELECT value FROM json_each(?)) AND ${grantMarks} ORDER BY seq`;
      rows.push(...this.#statement(marks).all(JSON.stringify(query.grantIds)));
    }
    const lastDenied = `SELECT ${columns} FROM events WHERE subject = ? AND ${denied} ORDER BY position DESC LIMIT ?`;
    const lastBurst = `SELECT ${columns} FROM events WHERE subject = ? AND type = 'alert.denied_burst' AND ${alerts} ORDER BY seq DESC LIMIT 1`;
    for (const { subject, denials } of query.subjects) {
      rows.push(...this.#statement(lastDenied).all(subject, denials), ...this.#statement(lastBurst).all(subject));
    }
    return rows.sort((one, other) => Number(one.seq) - Number(other.seq)).map(pastFromRow);
  }

  #insertCheckpoint(checkpoint: Checkpoint): void {
    this.#statement('INSERT INTO audit_checkpoints (position, hash, at, key_id, signature) VALUES (?, ?, ?, ?, ?)').run(
      checkpoint.position,
      checkpoint.hash,
      checkpoint.at,
      checkpoint.keyId,
      checkpoint.signature,
    );
  }

  #head(): ChainHead {
    const last = this.#statement('SELECT position, hash FROM events WHERE position IS NOT NULL ORDER BY position DESC LIMIT 1').get();
    const checkpoint = this.#statement('SELECT * FROM audit_checkpoints ORDER BY position DESC LIMIT 1').get();
    return {
      position: last ? Number(last.position) : 0,
      hash: last ? String(last.hash) : '',
      checkpoint: checkpoint ? checkpointFromRow(checkpoint) : undefined,
    };
  }

  async chainHead(): Promise<ChainHead> {
    return this.#head();
  }

  async queryAudit(query: AuditQuery): Promise<AuditRow[]> {
    const { where, params } = auditWhere(query);
    return this.#statement(`SELECT * FROM events WHERE ${where.join(' AND ')} ORDER BY position LIMIT ?`)
      .all(...params, query.limit)
      .map(auditRowFromRow);
  }

  async readChain(afterPosition: number, limit: number): Promise<AuditRow[]> {
    const statement = this.#statement(`SELECT ${CHAIN_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?`);
    statement.setReturnArrays(true);
    return (statement.all(afterPosition, limit) as unknown as unknown[][]).map(chainRowFromValues);
  }

  async listCheckpoints(range?: { from: number; to: number }): Promise<Checkpoint[]> {
    const rows = range
      ? this.#statement('SELECT * FROM audit_checkpoints WHERE position BETWEEN ? AND ? ORDER BY position').all(range.from, range.to)
      : this.#statement('SELECT * FROM audit_checkpoints ORDER BY position').all();
    return rows.map(checkpointFromRow);
  }

  async unsealed(): Promise<{ count: number; oldestAt: number | null }> {
    const row = this.#statement(
      `SELECT count(*) AS count, min(at) AS oldest FROM events WHERE seq > ${AFTER_LAST_SEALED} AND position IS NULL`,
    ).get();
    return { count: Number(row?.count ?? 0), oldestAt: row?.oldest === null || row?.oldest === undefined ? null : Number(row.oldest) };
  }

  async leaseSink(name: string, owner: string, now: number, leaseUntil: number, start: number): Promise<SinkCursor | undefined> {
    const row = this.#statement(
      `INSERT INTO audit_sinks (name, position, owner, lease_until) VALUES (?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
         WHERE audit_sinks.owner = excluded.owner OR audit_sinks.lease_until <= ?
         RETURNING *`,
    ).get(name, start, owner, leaseUntil, now);
    return row ? sinkFromRow(row) : undefined;
  }

  async saveSink(name: string, owner: string, update: { position: number; attempts: number; lastError: string | null }): Promise<void> {
    this.#statement('UPDATE audit_sinks SET position = ?, attempts = ?, last_error = ? WHERE name = ? AND owner = ?').run(
      update.position,
      update.attempts,
      update.lastError,
      name,
      owner,
    );
  }

  async addSession(session: SessionRecord): Promise<void> {
    const forget = this.#statement('DELETE FROM oidc_sessions WHERE expires_at < ?');
    const insert = this.#statement(
      `INSERT INTO oidc_sessions (${SESSION_COLUMNS.join(', ')}) VALUES (${SESSION_COLUMNS.map(() => '?').join(', ')})`,
    );
    this.#transaction(() => {
      forget.run(session.createdAt);
      insert.run(...sessionValues(session));
    });
  }

  async findSessionByTokenHash(tokenHash: string): Promise<SessionRecord | undefined> {
    const row = this.#statement('SELECT * FROM oidc_sessions WHERE token_hash = ?').get(tokenHash);
    return row ? sessionFromRow({ row, json: fromText }) : undefined;
  }

  async close(): Promise<void> {
    if (this.#db.isOpen) this.#db.close();
  }
}
