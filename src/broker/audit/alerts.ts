import type { AuditEvent, AuditRow } from '../store/store.ts';

/** broker.yaml `audit.alerts` (docs/audit.md#alerts). */
export type AlertRules = {
  /** This many denied records for one subject within `deniedWindowMs` raise `alert.denied_burst`. */
  deniedBurst: number;
  deniedWindowMs: number;
};

export const DEFAULT_ALERT_RULES: AlertRules = { deniedBurst: 5, deniedWindowMs: 60_000 };

/** How many grants' requesting addresses are remembered for the host check. */
const REMEMBERED_GRANTS = 50_000;

/**
 * Alerts derived from the sealed chain. The replica that seals a batch inspects it, so each record
 * is inspected once across replicas; the alerts go back into the log as `alert.*` records (and so
 * out through the export sinks). Rules:
 * - `alert.denied_burst`: a burst of denied requests or accesses by one subject;
 * - `alert.ended_credential_used`: a revoked, expired or suspended grant's credential presented;
 * - `alert.budget_exhausted`: a grant suspended for using up its API budget;
 * - `alert.host_mismatch`: a credential used from another address than the one that requested it.
 * State (recent denials, requesting addresses) is this replica's memory: when sealing moves to
 * another replica, bursts and addresses start afresh there.
 */
export class Alerts {
  readonly #rules: AlertRules;
  readonly #denials = new Map<string, number[]>();
  readonly #requestedFrom = new Map<string, string>();
  readonly #mismatched = new Set<string>();

  /**
   * Records from before `since` (less one burst window) are history, not news: an upgrade that
   * seals an old backlog, or a replica taking over sealing, raises no alerts for them.
   */
  readonly #since: number;

  constructor(rules: AlertRules = DEFAULT_ALERT_RULES, since = 0) {
    this.#rules = rules;
    this.#since = since - rules.deniedWindowMs;
  }

  inspect(rows: readonly AuditRow[], now: number): AuditEvent[] {
    const alerts: AuditEvent[] = [];
    for (const row of rows) {
      if (row.action.startsWith('alert.') || row.at < this.#since) continue;
      const detail = JSON.parse(row.detail) as Record<string, unknown>;
      const raise = (type: string, extra: Record<string, unknown>) =>
        alerts.push({
          at: now,
          type,
          actor: 'system',
          subject: row.subject,
          grantId: row.grantId,
          scope: row.scope,
          detail: { ...extra, record: row.position },
        });
      if (row.outcome === 'denied' && row.subject) {
        const burst = this.#denied(row.subject, row.at);
        if (burst) raise('alert.denied_burst', { denials: burst, windowSeconds: this.#rules.deniedWindowMs / 1000 });
      }
      if (row.action === 'data.refused' && detail.reason === 'grant_ended') {
        raise('alert.ended_credential_used', { state: detail.state ?? null, source: detail.source ?? null });
      }
      if (row.action === 'grant.suspended') raise('alert.budget_exhausted', { reason: detail.reason ?? null });
      this.#checkHost(row, detail, raise);
    }
    return alerts;
  }

  /** The burst size when this denial completes one (then the count starts over), else 0. */
  #denied(subject: string, at: number): number {
    const recent = (this.#denials.get(subject) ?? []).filter((time) => at - time < this.#rules.deniedWindowMs);
    recent.push(at);
    if (recent.length >= this.#rules.deniedBurst) {
      this.#denials.delete(subject);
      return recent.length;
    }
    this.#denials.set(subject, recent);
    return 0;
  }

  #checkHost(row: AuditRow, detail: Record<string, unknown>, raise: (type: string, extra: Record<string, unknown>) => void): void {
    if (!row.grantId || typeof detail.source !== 'string') return;
    if (row.action === 'grant.issued' || row.action === 'grant.requested') {
      if (this.#requestedFrom.size >= REMEMBERED_GRANTS) this.#requestedFrom.delete(this.#requestedFrom.keys().next().value ?? '');
      this.#requestedFrom.set(row.grantId, detail.source);
      return;
    }
    if (!row.action.startsWith('data.')) return;
    const requested = this.#requestedFrom.get(row.grantId);
    // Once per grant: a job on another host makes every access mismatch.
    if (requested === undefined || requested === detail.source || this.#mismatched.has(row.grantId)) return;
    this.#mismatched.add(row.grantId);
    raise('alert.host_mismatch', { requestedFrom: requested, usedFrom: detail.source });
  }
}
