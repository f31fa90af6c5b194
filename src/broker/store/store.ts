import type { Role } from '../../core/caller.ts';
import type { GrantState } from '../../core/grant.ts';

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
  };
}

export type AuditEvent = {
  at: number;
  type: string;
  subject: string | null;
  grantId: string | null;
  detail: Record<string, unknown>;
};

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
  endGrant(id: string, state: GrantState, reason: string, at: number, from?: 'active' | 'pending'): Promise<GrantRecord | undefined>;
  /**
   * Makes a pending grant active, unless it has left pending or its approval deadline passed by
   * `times.activatedAt`. The heartbeat deadline stays: a waiter that stopped heartbeating while
   * pending (its `jit run` died) gets a grant that lapses at once.
   */
  activateGrant(id: string, times: { activatedAt: number; expiresAt: number }): Promise<GrantRecord | undefined>;
  /** Moves the expiry of a grant usable at `now` later, to `expiresAt`; undefined if not usable or not later. */
  renewGrant(id: string, expiresAt: number, now: number): Promise<GrantRecord | undefined>;
  /** Records a reviewer's verdict; false when this reviewer already gave one for this grant. */
  addApproval(approval: ApprovalRecord): Promise<boolean>;
  listApprovals(grantId: string): Promise<ApprovalRecord[]>;
  /**
   * Ends up to `limit` pending grants that can no longer be approved, exactly once across
   * replicas: past their approval deadline (timed-out), or whose waiting requester stopped
   * heartbeating (cancelled, "requester stopped waiting").
   */
  timeOutPending(now: number, limit?: number): Promise<GrantRecord[]>;
  /**
   * Ends up to `limit` active grants past their expiry or heartbeat deadline at `now`, returning
   * them. Each due grant is returned by exactly one call, even across replicas sweeping at once;
   * fewer than `limit` back means none was left due.
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
  close(): Promise<void>;
}
