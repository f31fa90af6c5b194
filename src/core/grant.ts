/** The grant as the API, the CLI and the local index speak of it (docs/api.md). */
export const GRANT_STATES = ['pending', 'active', 'revoked', 'expired', 'denied', 'cancelled', 'timed-out'] as const;
export const GRANT_ID = /^g_[0-9a-f]{20}$/;

export type GrantState = (typeof GRANT_STATES)[number];

export type GrantView = {
  id: string;
  subject: string;
  scopes: string[];
  reason: string | null;
  state: GrantState;
  createdAt: string;
  expiresAt: string;
  heartbeatDeadline: string;
  heartbeatIntervalSeconds: number;
  endedAt: string | null;
  endReason: string | null;
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
};
