import type { Role } from '../../core/caller.ts';
import type { GrantState } from '../../core/grant.ts';
import { type ChainFields, type Checkpoint, outcomeOf } from '../audit/chain.ts';

/**
 * The broker's storage contract. Every engine (sqlite.ts, postgres.ts) implements it;
 * conditional updates are single statements so that replicas sharing a database never race a
 * grant into two end states. Times are epoch milliseconds.
 */
/**
 * One API token of a principal (docs/principals.md). `tokenId` is public (lists, revoke); the
 * token itself is never stored, only `tokenHash`, which is what authentication looks up.
 */
export type PrincipalRecord = {
  tokenId: string;
  subject: string;
  tokenHash: string;
  roles: Role[];
  label: string | null;
  /** Who minted it: an admin's subject, or `local:broker-host` for `--dir` and `jit broker init`. */
  createdBy: string | null;
  createdAt: number;
  revokedAt: number | null;
};

/** The principals table's columns in one order, with a record's values in that order: both engines insert through these. */
export const PRINCIPAL_COLUMNS = ['token_id', 'subject', 'token_hash', 'roles', 'label', 'created_by', 'created_at', 'revoked_at'] as const;

export function principalValues(principal: PrincipalRecord): (string | number | null)[] {
  return [
    principal.tokenId,
    principal.subject,
    principal.tokenHash,
    JSON.stringify(principal.roles),
    principal.label,
    principal.createdBy,
    principal.createdAt,
    principal.revokedAt,
  ];
}

/**
 * A session from one OIDC exchange (docs/ci.md#oidc): what a CI job authenticates with, in place of
 * an API token, until `expiresAt`. Only the bearer's hash is kept; `claims` are the verified
 * token's, for the policy's claim rules.
 */
export type SessionRecord = {
  sessionId: string;
  subject: string;
  tokenHash: string;
  /** The issuer's name in broker.yaml. */
  issuer: string;
  claims: Record<string, unknown>;
  createdAt: number;
  expiresAt: number;
};

/** The oidc_sessions table's columns in one order, with a session's values in that order: both engines insert through these. */
export const SESSION_COLUMNS = ['session_id', 'subject', 'token_hash', 'issuer', 'claims', 'created_at', 'expires_at'] as const;

export function sessionValues(session: SessionRecord): (string | number)[] {
  return [
    session.sessionId,
    session.subject,
    session.tokenHash,
    session.issuer,
    JSON.stringify(session.claims),
    session.createdAt,
    session.expiresAt,
  ];
}

export function sessionFromRow({ row, json }: RowReader): SessionRecord {
  return {
    sessionId: String(row.session_id),
    subject: String(row.subject),
    tokenHash: String(row.token_hash),
    issuer: String(row.issuer),
    claims: json(row.claims) as Record<string, unknown>,
    createdAt: Number(row.created_at),
    expiresAt: Number(row.expires_at),
  };
}

export type GrantRecord = {
  id: string;
  subject: string;
  scopes: string[];
  reason: string | null;
  state: GrantState;
  credentialHash: string;
  createdAt: number;
  expiresAt: number;
  heartbeatDeadline: number;
  endedAt: number | null;
  endReason: string | null;
  decision: string;
  /** The lifetime it gets when it becomes active (on approval), and what a renewal extends by. */
  ttlSeconds: number;
  /** When it became usable; null while pending. The policy's max TTL counts from here. */
  activatedAt: number | null;
  /** When a pending request times out; null for a grant issued without approval. */
  approvalDeadline: number | null;
};

/**
 * A heartbeat deadline that is not running: the grant's holder has not started heartbeating yet
 * (`jit request`, `jit run --no-wait`). The first heartbeat starts the clock. (The max Date.)
 */
export const NO_HEARTBEAT = 8_640_000_000_000_000;

/** A provider cleanup still to do for an ended grant (its database role to drop), retried until done. */
export type DeprovisionRecord = {
  grantId: string;
  resources: string[];
  attempts: number;
  nextAttemptAt: number;
  lastError: string | null;
  createdAt: number;
  doneAt: number | null;
};

export function deprovisionFromRow({ row, json }: RowReader): DeprovisionRecord {
  return {
    grantId: String(row.grant_id),
    resources: json(row.resources) as string[],
    attempts: Number(row.attempts),
    nextAttemptAt: Number(row.next_attempt_at),
    lastError: nullableString(row.last_error),
    createdAt: Number(row.created_at),
    doneAt: nullableNumber(row.done_at),
  };
}

/** One reviewer's verdict on a pending grant; a reviewer has at most one per grant. */
export type ApprovalRecord = {
  grantId: string;
  approver: string;
  verdict: 'approve' | 'deny';
  reason: string | null;
  at: number;
};

/** The grants table's columns in one order, with a record's values in that order: both engines insert through these. */
export const GRANT_COLUMNS = [
  'id',
  'subject',
  'scopes',
  'reason',
  'state',
  'credential_hash',
  'created_at',
  'expires_at',
  'heartbeat_deadline',
  'ended_at',
  'end_reason',
  'decision',
  'ttl_seconds',
  'activated_at',
  'approval_deadline',
] as const;

export function grantValues(grant: GrantRecord): (string | number | null)[] {
  return [
    grant.id,
    grant.subject,
    JSON.stringify(grant.scopes),
    grant.reason,
    grant.state,
    grant.credentialHash,
    grant.createdAt,
    grant.expiresAt,
    grant.heartbeatDeadline,
    grant.endedAt,
    grant.endReason,
    grant.decision,
    grant.ttlSeconds,
    grant.activatedAt,
    grant.approvalDeadline,
  ];
}

/**
 * A row of the grants or events table as a record. The engines differ only in how a JSON column
 * arrives: TEXT to parse on SQLite, already decoded JSONB on PostgreSQL, hence `json`.
 */
type RowReader = { row: Record<string, unknown>; json: (value: unknown) => unknown };

const nullableString = (value: unknown) => (value === null || value === undefined ? null : String(value));
const nullableNumber = (value: unknown) => (value === null || value === undefined ? null : Number(value));

export function grantFromRow({ row, json }: RowReader): GrantRecord {
  return {
    id: String(row.id),
    subject: String(row.subject),
    scopes: json(row.scopes) as string[],
    reason: nullableString(row.reason),
    state: String(row.state) as GrantState,
    credentialHash: String(row.credential_hash),
    createdAt: Number(row.created_at),
    expiresAt: Number(row.expires_at),
    heartbeatDeadline: Number(row.heartbeat_deadline),
    endedAt: nullableNumber(row.ended_at),
    endReason: nullableString(row.end_reason),
    decision: String(row.decision),
    ttlSeconds: Number(row.ttl_seconds),
    activatedAt: nullableNumber(row.activated_at),
    approvalDeadline: nullableNumber(row.approval_deadline),
  };
}

export function principalFromRow({ row, json }: RowReader): PrincipalRecord {
  return {
    tokenId: String(row.token_id),
    subject: String(row.subject),
    tokenHash: String(row.token_hash),
    roles: json(row.roles) as Role[],
    label: nullableString(row.label),
    createdBy: nullableString(row.created_by),
    createdAt: Number(row.created_at),
    revokedAt: nullableNumber(row.revoked_at),
  };
}

/** approvals has no JSON column: one mapping serves both engines as they are. */
export function approvalFromRow(row: Record<string, unknown>): ApprovalRecord {
  return {
    grantId: String(row.grant_id),
    approver: String(row.approver),
    verdict: row.verdict === 'deny' ? 'deny' : 'approve',
    reason: nullableString(row.reason),
    at: Number(row.at),
  };
}

export function eventFromRow({ row, json }: RowReader): AuditEvent {
  return {
    at: Number(row.at),
    type: String(row.type),
    subject: nullableString(row.subject),
    grantId: nullableString(row.grant_id),
    detail: json(row.detail) as Record<string, unknown>,
    actor: nullableString(row.actor),
    scope: nullableString(row.scope),
    outcome: String(row.outcome ?? 'ok'),
  };
}

/**
 * One audit event as it is appended. `actor` (who did it: a user, a CI identity, `system`)
 * defaults to `detail.by`, then to `subject` (whose grant or token it is); `outcome` to what
 * `type` implies (audit/chain.ts outcomeOf); `scope` to none.
 */
export type AuditEvent = {
  at: number;
  type: string;
  subject: string | null;
  grantId: string | null;
  detail: Record<string, unknown>;
  actor?: string | null;
  scope?: string | null;
  outcome?: string;
};

/** An event about the grant a conditional update returns: the engine fills in subject, grant and scope from the row. */
export type GrantEvent = { type: string; detail: Record<string, unknown>; actor?: string };

/** The events table's written columns in one order, with an event's values in that order. */
export const EVENT_COLUMNS = ['at', 'type', 'actor', 'subject', 'grant_id', 'scope', 'outcome', 'detail'] as const;

export function eventValues(event: AuditEvent): (string | number | null)[] {
  const by = event.detail.by;
  return [
    event.at,
    event.type,
    event.actor ?? (typeof by === 'string' ? by : event.subject),
    event.subject,
    event.grantId,
    event.scope ?? null,
    event.outcome ?? outcomeOf(event.type),
    JSON.stringify(event.detail),
  ];
}

/** `event` about `grant`, at `at`. */
export function aboutGrant(grant: GrantRecord, at: number, event: GrantEvent): AuditEvent {
  return { at, subject: grant.subject, grantId: grant.id, scope: grant.scopes.join(' '), ...event };
}

/**
 * A sealed event as the audit API shows it: `seq` is its position in the hash chain (gap-free,
 * the same on every replica), `hash` its chain hash.
 */
export type AuditRow = ChainFields & { hash: string };

export function auditRowFromRow(row: Record<string, unknown>): AuditRow {
  return {
    position: Number(row.position),
    at: Number(row.at),
    action: String(row.type),
    actor: nullableString(row.actor),
    subject: nullableString(row.subject),
    grantId: nullableString(row.grant_id),
    scope: nullableString(row.scope),
    outcome: String(row.outcome),
    detail: String(row.detail),
    hash: String(row.hash),
  };
}

/** The columns a chain walk reads, in the order chainRowFromValues takes them. */
export const CHAIN_COLUMNS = 'position, at, type, actor, subject, grant_id, scope, outcome, detail, hash';

/** A row of CHAIN_COLUMNS read as an array (no per-row object of column names: verify reads millions). */
export function chainRowFromValues(values: readonly unknown[]): AuditRow {
  const [position, at, action, actor, subject, grantId, scope, outcome, detail, hash] = values;
  return {
    position: Number(position),
    at: Number(at),
    action: String(action),
    actor: nullableString(actor),
    subject: nullableString(subject),
    grantId: nullableString(grantId),
    scope: nullableString(scope),
    outcome: String(outcome),
    detail: String(detail),
    hash: String(hash),
  };
}

/** An event not sealed into the chain yet, in insertion order (`seq`). */
export type UnsealedRow = Omit<ChainFields, 'position'> & { seq: number };

export function unsealedFromRow(row: Record<string, unknown>): UnsealedRow {
  const { position: _, hash: __, ...fields } = auditRowFromRow({ ...row, position: 0, hash: '' });
  return { ...fields, seq: Number(row.seq) };
}

/** What one seal step writes: each unsealed row's position, hash and canonical detail, and maybe a checkpoint. */
export type SealPlan = {
  sealed: { seq: number; position: number; hash: string; detail: string }[];
  checkpoint: Checkpoint | undefined;
};

export type SealOptions = {
  evenIfNone?: boolean;
  /**
   * Events that follow from a sealed batch (alerts), asked after the batch is written and before
   * any replica can seal the next one, with a history that holds the batch; they are appended
   * with it (PostgreSQL: in its transaction, under the sealing lock). So what one step raises, the
   * next step's history holds, whichever replica takes it. SQLite has one broker: it asks after
   * the commit and appends then.
   */
  derive?: (history: AlertHistory) => Promise<AuditEvent[]>;
};

/** The chain's last sealed record and last checkpoint (the sealer's starting point). */
export type ChainHead = { position: number; hash: string; checkpoint: Checkpoint | undefined };

/**
 * A record the alert rules look back on (audit/alerts.ts), sealed or not yet (`position` null):
 * an alert raised by another replica may still wait to be sealed.
 */
export type PastRecord = {
  position: number | null;
  at: number;
  action: string;
  subject: string | null;
  grantId: string | null;
  outcome: string;
  /** JSON text. */
  detail: string;
};

/** What alertHistory looks up (audit/alerts.ts). */
export type AlertHistoryQuery = {
  /** These grants' request records (grant.requested, grant.issued) and alert.host_mismatch records. */
  grantIds: readonly string[];
  /** Each subject's last `denials` sealed denied records, and its latest alert.denied_burst record. */
  subjects: readonly { subject: string; denials: number }[];
};

/**
 * alertHistory's SQL, on migration 11's indexes: a grant's marks by events_grant (grant_id, type);
 * denials and alerts by the partial events_denied and events_alerts, whose predicates are repeated
 * verbatim (SQLite uses a partial index only then).
 */
export const HISTORY_SQL = {
  columns: 'seq, position, at, type, subject, grant_id, outcome, detail',
  grantMarks: "type IN ('grant.requested', 'grant.issued', 'alert.host_mismatch')",
  denied: "outcome = 'denied' AND position IS NOT NULL",
  alerts: "outcome = 'alert'",
} as const;

export function pastFromRow(row: Record<string, unknown>): PastRecord {
  return {
    position: nullableNumber(row.position),
    at: Number(row.at),
    action: String(row.type),
    subject: nullableString(row.subject),
    grantId: nullableString(row.grant_id),
    outcome: String(row.outcome),
    detail: String(row.detail),
  };
}

/** The store as alert rules read it: inside a seal step, the batch being sealed included. */
export type AlertHistory = Pick<BrokerStore, 'alertHistory'>;

/** A page of sealed records: filters are ANDed; `action` ending in `.*` matches a prefix. */
export type AuditQuery = {
  afterPosition?: number;
  limit: number;
  grantId?: string;
  subject?: string;
  actor?: string;
  action?: string;
  outcome?: string;
  scope?: string;
  since?: number;
  until?: number;
};

export function checkpointFromRow(row: Record<string, unknown>): Checkpoint {
  return {
    position: Number(row.position),
    hash: String(row.hash),
    at: Number(row.at),
    keyId: String(row.key_id),
    signature: String(row.signature),
  };
}

/** Where an export sink stands: the last position delivered, and the lease of the replica delivering. */
export type SinkCursor = { name: string; position: number; attempts: number; lastError: string | null };

/** How many grants one expireDue call ends at most: a backlog is worked off in bounded steps. */
export const EXPIRE_BATCH = 500;

export interface BrokerStore {
  /** Inserts a principal's token and, when given, its audit event in the same transaction. */
  addPrincipal(principal: PrincipalRecord, event?: AuditEvent): Promise<void>;
  /** The token behind a hash, unless it is revoked: a revoked token stops authenticating at once. */
  findPrincipalByTokenHash(tokenHash: string): Promise<PrincipalRecord | undefined>;
  /** Every token, revoked ones too, oldest first. */
  listPrincipals(): Promise<PrincipalRecord[]>;
  /**
   * Revokes a token that is not revoked yet at `at`, with `event` (its subject: the token's) in the
   * same transaction; undefined when there is no such token or it was already revoked.
   */
  revokePrincipal(tokenId: string, at: number, event: Omit<AuditEvent, 'subject'>): Promise<PrincipalRecord | undefined>;
  /** Stores an OIDC session, and forgets sessions that expired before `session.createdAt`. */
  addSession(session: SessionRecord): Promise<void>;
  /** The session behind a bearer's hash, expired or not (the caller says which it is). */
  findSessionByTokenHash(tokenHash: string): Promise<SessionRecord | undefined>;
  /** Inserts a grant and, when given, its audit event in the same transaction. */
  insertGrant(grant: GrantRecord, event?: AuditEvent): Promise<void>;
  getGrant(id: string): Promise<GrantRecord | undefined>;
  findGrantByCredentialHash(credentialHash: string): Promise<GrantRecord | undefined>;
  listGrants(filter: { subject?: string; states?: readonly GrantState[] }): Promise<GrantRecord[]>;
  /** Moves the heartbeat deadline of a grant still usable (or still pending) at `now`; undefined if it is not. */
  extendHeartbeat(id: string, deadline: number, now: number): Promise<GrantRecord | undefined>;
  /**
   * Moves a grant in state `from` (active unless said) to an end state; undefined when it was no
   * longer in `from` (someone else won).
   */
  endGrant(
    id: string,
    state: GrantState,
    reason: string,
    at: number,
    from?: 'active' | 'pending',
    event?: GrantEvent,
  ): Promise<GrantRecord | undefined>;
  /**
   * Makes a pending grant active, unless it has left pending or its approval deadline passed by
   * `times.activatedAt`. The heartbeat deadline stays: a waiter that stopped heartbeating while
   * pending (its `jit run` died) gets a grant that lapses at once.
   */
  activateGrant(id: string, times: { activatedAt: number; expiresAt: number }, event?: GrantEvent): Promise<GrantRecord | undefined>;
  /** Moves the expiry of a grant usable at `now` later, to `expiresAt`; undefined if not usable or not later. */
  renewGrant(id: string, expiresAt: number, now: number, event?: GrantEvent): Promise<GrantRecord | undefined>;
  /** Records a reviewer's verdict; false when this reviewer already gave one for this grant. */
  addApproval(approval: ApprovalRecord, event?: AuditEvent): Promise<boolean>;
  listApprovals(grantId: string): Promise<ApprovalRecord[]>;
  /**
   * Ends up to `limit` pending grants that can no longer be approved, exactly once across
   * replicas: past their approval deadline (timed-out), or whose waiting requester stopped
   * heartbeating (cancelled, "requester stopped waiting"). Each end's audit event (by `system`)
   * commits with it.
   */
  timeOutPending(now: number, limit?: number): Promise<GrantRecord[]>;
  /**
   * Ends up to `limit` active grants past their expiry or heartbeat deadline at `now`, returning
   * them. Each due grant is returned by exactly one call, even across replicas sweeping at once;
   * fewer than `limit` back means none was left due. Each end's audit event (by `system`)
   * commits with it.
   */
  expireDue(now: number, limit?: number): Promise<GrantRecord[]>;
  /** Records a cleanup to retry (or, when one is there, its latest failure). */
  saveDeprovision(record: DeprovisionRecord): Promise<void>;
  getDeprovision(grantId: string): Promise<DeprovisionRecord | undefined>;
  /**
   * Claims up to `limit` cleanups due at `now` for this replica: each is returned to one caller
   * only, its next attempt moved to `leaseUntil` so that a replica that dies mid-attempt leaves it
   * to be claimed again then.
   */
  claimDeprovisions(now: number, leaseUntil: number, limit: number): Promise<DeprovisionRecord[]>;
  /** Adds to a grant's usage (API budgets) and returns the totals, atomically across replicas. */
  addUsage(grantId: string, requests: number, bytes: number): Promise<{ requests: number; bytes: number }>;
  appendEvent(event: AuditEvent): Promise<void>;
  /** Appends several events in one transaction (the sweeper's batch), in order. */
  appendEvents(events: readonly AuditEvent[]): Promise<void>;
  listEvents(filter: { grantId?: string }): Promise<AuditEvent[]>;
  /**
   * Seals up to `limit` unsealed events, oldest insertion first, into the chain: `plan` gets the
   * head and the rows and says what to write; it all commits together. One sealer at a time
   * across replicas: a replica that finds another sealing returns undefined at once. With
   * `evenIfNone`, `plan` is asked with no rows too, so it can sign a checkpoint over a head that
   * quiet has left unsigned.
   */
  sealEvents(limit: number, plan: (head: ChainHead, rows: UnsealedRow[]) => SealPlan, options?: SealOptions): Promise<number | undefined>;
  /**
   * The records alert rules look back on (AlertHistoryQuery), sealed or not, in insertion order.
   * Each part is a short walk of an index, however long the trail or the grant's use.
   */
  alertHistory(query: AlertHistoryQuery): Promise<PastRecord[]>;
  chainHead(): Promise<ChainHead>;
  /** Sealed records matching `query`, by position. */
  queryAudit(query: AuditQuery): Promise<AuditRow[]>;
  /**
   * Up to `limit` sealed records after `afterPosition`, by position: verify's read, unfiltered,
   * which each engine does as cheaply as it can (queryAudit gives the same rows).
   */
  readChain(afterPosition: number, limit: number): Promise<AuditRow[]>;
  /** Every checkpoint (or those at positions from..to), by position. */
  listCheckpoints(range?: { from: number; to: number }): Promise<Checkpoint[]>;
  /** How many events wait to be sealed, and when the oldest was written. */
  unsealed(): Promise<{ count: number; oldestAt: number | null }>;
  /**
   * Takes (or keeps) the lease on export sink `name` for `owner` until `leaseUntil`; undefined
   * when another replica holds it. A new sink starts at position `start`.
   */
  leaseSink(name: string, owner: string, now: number, leaseUntil: number, start: number): Promise<SinkCursor | undefined>;
  /** Records a sink's progress (position delivered) or its latest failure. */
  saveSink(name: string, owner: string, update: { position: number; attempts: number; lastError: string | null }): Promise<void>;
  close(): Promise<void>;
}

/** The `system` event of a grant a sweep ended: expired (ttl, heartbeat), timed out or abandoned. */
export function systemEnd(grant: GrantRecord): GrantEvent {
  return { type: `grant.${grant.state}`, actor: 'system', detail: { reason: grant.endReason, by: 'system' } };
}

export function sinkFromRow(row: Record<string, unknown>): SinkCursor {
  return {
    name: String(row.name),
    position: Number(row.position),
    attempts: Number(row.attempts),
    lastError: row.last_error === null || row.last_error === undefined ? null : String(row.last_error),
  };
}

/** The WHERE clauses of an audit query, with `?` placeholders (PostgreSQL numbers them). */
export function auditWhere(query: AuditQuery): { where: string[]; params: (string | number)[] } {
  const where = ['position IS NOT NULL'];
  const params: (string | number)[] = [];
  const add = (clause: string, value: string | number) => {
    where.push(clause);
    params.push(value);
  };
  if (query.afterPosition !== undefined) add('position > ?', query.afterPosition);
  if (query.grantId !== undefined) add('grant_id = ?', query.grantId);
  if (query.subject !== undefined) add('subject = ?', query.subject);
  if (query.actor !== undefined) add('actor = ?', query.actor);
  if (query.outcome !== undefined) add('outcome = ?', query.outcome);
  if (query.action?.endsWith('.*')) add("type LIKE ? ESCAPE '\\'", `${query.action.slice(0, -1).replace(/[\\%_]/g, '\\$&')}%`);
  else if (query.action !== undefined) add('type = ?', query.action);
  if (query.scope !== undefined) add("(' ' || scope || ' ') LIKE ? ESCAPE '\\'", `% ${query.scope.replace(/[\\%_]/g, '\\$&')}%`);
  if (query.since !== undefined) add('at >= ?', query.since);
  if (query.until !== undefined) add('at < ?', query.until);
  return { where, params };
}
