/**
 * The audit trail's shapes, shared by the broker (which writes and verifies it) and the CLI
 * (`jit audit`, `jit watch`). docs/audit.md describes each field.
 */

/** One audit record as the API, `jit audit` and the export sinks show it. */
export type AuditRecord = {
  /** Position in the hash chain: 1, 2, 3, ... with no gaps, the same on every replica. */
  seq: number;
  at: string;
  action: string;
  /** Who did it: a user, a CI identity, or `system`. */
  actor: string | null;
  /** Whose grant or token it is about. */
  subject: string | null;
  grant: string | null;
  /** The scopes involved, space-separated. */
  scope: string | null;
  outcome: string;
  details: Record<string, unknown>;
  /** SHA-256 chain hash over the previous record's hash and this record. */
  hash: string;
  /**
   * Present on a record a checkpoint was signed at: the broker's Ed25519 signature over this
   * seq and hash (outside the hash), so an exported copy can be verified offline.
   */
  checkpoint?: { at: string; keyId: string; signature: string };
};

/** What tampering (or damage) a verification found first. */
export type ChainProblem = {
  kind: 'altered' | 'missing' | 'rewritten' | 'truncated' | 'bad-signature' | 'untrusted-key' | 'out-of-order';
  /** The first record that does not verify (for truncation: the last checkpoint's position). */
  position: number;
  message: string;
};

export type VerifyReport = {
  ok: boolean;
  /** Records verified before the first problem (all of them when ok). */
  records: number;
  /** The last checkpoint the verified records reach, or null when none does yet. */
  checkpoint: { position: number; at: string; keyId: string; hash: string } | null;
  head: { position: number; hash: string } | null;
  problem: ChainProblem | null;
  /** Events appended but not sealed into the chain yet (not covered by this verification). */
  unsealed: number;
  elapsedMs: number;
};
