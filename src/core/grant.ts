/** The grant as the API, the CLI and the local index speak of it (docs/api.md). */
export const GRANT_STATES = ['pending', 'active', 'revoked', 'expired', 'denied', 'cancelled', 'timed-out', 'suspended'] as const;
export const GRANT_ID = /^g_[0-9a-f]{20}$/;

export type GrantState = (typeof GRANT_STATES)[number];

/** Where a request that needs approval stands (docs/policy.md#approval). */
export type ApprovalView = {
  /** When a pending request times out. */
  deadline: string;
  /** One per approval rule its scopes fall under; all must be met. */
  requirements: { scopes: string[]; approvers: string[]; count: number; approvedBy: string[] }[];
  deniedBy: { approver: string; reason: string | null } | null;
};

export type GrantView = {
  id: string;
  subject: string;
  scopes: string[];
  reason: string | null;
  state: GrantState;
  createdAt: string;
  /** When it became usable; null while pending (or if it never did). */
  activatedAt: string | null;
  /** When it stops being usable; null while pending. */
  expiresAt: string | null;
  /** The lifetime it was asked for; what approval starts and renewal extends by. */
  ttlSeconds: number;
  /** null while nobody is heartbeating it (`jit request`, before `jit run --grant` picks it up). */
  heartbeatDeadline: string | null;
  heartbeatIntervalSeconds: number;
  endedAt: string | null;
  endReason: string | null;
  /** null for a grant whose policy needed no approval. */
  approval: ApprovalView | null;
  /** "pending" while an ended grant's database role is still to be dropped (retried until done). */
  deprovision?: 'pending';
};

/** What `POST /v1/grants` returns once: the grant plus its credential and the job's environment. */
export type IssuedGrant = GrantView & {
  credential: string;
  env: Record<string, string>;
};

export type RevocationReceipt = {
  id: string;
  /** "unknown": the broker has no such grant (for this principal); this machine forgot it. */
  state: GrantState | 'unknown';
  revokedAt: string | null;
  alreadyEnded: boolean;
  actions: string[];
  /** Set when the grant's provider cleanup (its database role) could not be done yet: it is retried until done. */
  deprovision?: 'pending';
};
