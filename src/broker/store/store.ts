import type { GrantState } from '../../core/grant.ts';

/**
 * The broker's storage contract. Every engine (sqlite.ts today, postgres next) implements it;
 * conditional updates are single statements so that replicas sharing a database never race a
 * grant into two end states. Times are epoch milliseconds.
 */
export type PrincipalRecord = { subject: string; tokenHash: string; createdAt: number };

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
};

export type AuditEvent = {
  at: number;
  type: string;
  subject: string | null;
  grantId: string | null;
  detail: Record<string, unknown>;
};

export interface BrokerStore {
  addPrincipal(principal: PrincipalRecord): Promise<void>;
  findPrincipalByTokenHash(tokenHash: string): Promise<PrincipalRecord | undefined>;
  insertGrant(grant: GrantRecord): Promise<void>;
  getGrant(id: string): Promise<GrantRecord | undefined>;
  findGrantByCredentialHash(credentialHash: string): Promise<GrantRecord | undefined>;
  listGrants(filter: { subject?: string; states?: readonly GrantState[] }): Promise<GrantRecord[]>;
  /** Moves the heartbeat deadline of a grant that is still usable at `now`; undefined if it is not. */
  extendHeartbeat(id: string, deadline: number, now: number): Promise<GrantRecord | undefined>;
  /** Ends an active grant; undefined when it had already ended (someone else won). */
  endGrant(id: string, state: GrantState, reason: string, at: number): Promise<GrantRecord | undefined>;
  /** Ends every active grant past its expiry or heartbeat deadline at `now`, returning them. */
  expireDue(now: number): Promise<GrantRecord[]>;
  appendEvent(event: AuditEvent): Promise<void>;
  listEvents(filter: { grantId?: string }): Promise<AuditEvent[]>;
  close(): Promise<void>;
}
