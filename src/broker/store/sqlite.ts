import { chmodSync } from 'node:fs';
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import type { GrantState } from '../../core/grant.ts';
import { MIGRATIONS_TABLE, pendingMigrations } from './migrations.ts';
import {
  type ApprovalRecord,
  type AuditEvent,
  approvalFromRow,
  type BrokerStore,
  type DeprovisionRecord,
  deprovisionFromRow,
  EXPIRE_BATCH,
  eventFromRow,
  GRANT_COLUMNS,
  type GrantRecord,
  grantFromRow,
  grantValues,
  PRINCIPAL_COLUMNS,
  type PrincipalRecord,
  principalFromRow,
  principalValues,
} from './store.ts';

type Row = Record<string, SQLInputValue>;

/** JSON columns are TEXT on SQLite. */
const fromText = (value: unknown): unknown => JSON.parse(String(value));
const toGrant = (row: Row): GrantRecord => grantFromRow({ row, json: fromText });
const toPrincipal = (row: Row): PrincipalRecord => principalFromRow({ row, json: fromText });

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
  ): Promise<GrantRecord | undefined> {
    const row = this.#statement(`UPDATE grants SET state = ?, end_reason = ?, ended_at = ? WHERE id = ? AND state = ? RETURNING *`).get(
      state,
      reason,
      at,
      id,
      from,
    );
    return row ? toGrant(row) : undefined;
  }

  async activateGrant(id: string, times: { activatedAt: number; expiresAt: number }): Promise<GrantRecord | undefined> {
    const row = this.#statement(
      `UPDATE grants SET state = 'active', activated_at = ?, expires_at = ?
         WHERE id = ? AND state = 'pending' AND approval_deadline > ? RETURNING *`,
    ).get(times.activatedAt, times.expiresAt, id, times.activatedAt);
    return row ? toGrant(row) : undefined;
  }

  async renewGrant(id: string, expiresAt: number, now: number): Promise<GrantRecord | undefined> {
    const row = this.#statement(
      `UPDATE grants SET expires_at = ?
         WHERE id = ? AND state = 'active' AND expires_at > ? AND heartbeat_deadline > ? AND expires_at < ? RETURNING *`,
    ).get(expiresAt, id, now, now, expiresAt);
    return row ? toGrant(row) : undefined;
  }

  async addApproval(approval: ApprovalRecord): Promise<boolean> {
    const result = this.#statement(
      `INSERT INTO approvals (grant_id, approver, verdict, reason, at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (grant_id, approver) DO NOTHING`,
    ).run(approval.grantId, approval.approver, approval.verdict, approval.reason, approval.at);
    return Number(result.changes) === 1;
  }

  async listApprovals(grantId: string): Promise<ApprovalRecord[]> {
    return this.#statement('SELECT * FROM approvals WHERE grant_id = ? ORDER BY at, approver').all(grantId).map(approvalFromRow);
  }

  async timeOutPending(now: number, limit = EXPIRE_BATCH): Promise<GrantRecord[]> {
    return this.#statement(
      `UPDATE grants SET ended_at = ?,
           state = CASE WHEN approval_deadline <= ? THEN 'timed-out' ELSE 'cancelled' END,
           end_reason = CASE WHEN approval_deadline <= ? THEN 'approval timeout' ELSE 'requester stopped waiting' END
         WHERE state = 'pending' AND id IN (
           SELECT id FROM grants WHERE state = 'pending' AND (approval_deadline <= ? OR heartbeat_deadline <= ?) LIMIT ?
         ) RETURNING *`,
    )
      .all(now, now, now, now, now, limit)
      .map(toGrant);
  }

  async expireDue(now: number, limit = EXPIRE_BATCH): Promise<GrantRecord[]> {
    // One statement, and SQLite has one writer at a time: a grant ends in exactly one sweep.
    return this.#statement(
      `UPDATE grants SET state = 'expired', ended_at = ?,
           end_reason = CASE WHEN expires_at <= ? THEN 'ttl' ELSE 'heartbeat' END
         WHERE state = 'active' AND id IN (
           SELECT id FROM grants WHERE state = 'active' AND min(expires_at, heartbeat_deadline) <= ? LIMIT ?
         ) RETURNING *`,
    )
      .all(now, now, now, limit)
      .map(toGrant);
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
    this.#statement('INSERT INTO events (at, type, subject, grant_id, detail) VALUES (?, ?, ?, ?, ?)').run(
      event.at,
      event.type,
      event.subject,
      event.grantId,
      JSON.stringify(event.detail),
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

  async close(): Promise<void> {
    if (this.#db.isOpen) this.#db.close();
  }
}
