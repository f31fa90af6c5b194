import type { AlertHistory, AuditEvent, AuditRow, PastRecord } from '../store/store.ts';

/** broker.yaml `audit.alerts` (docs/audit.md#alerts). */
export type AlertRules = {
  /** This many denied records for one subject within `deniedWindowMs` raise `alert.denied_burst`. */
  deniedBurst: number;
  deniedWindowMs: number;
};

export const DEFAULT_ALERT_RULES: AlertRules = { deniedBurst: 5, deniedWindowMs: 60_000 };

/** How many grants' requesting addresses are remembered for the host check. */
const REMEMBERED_GRANTS = 50_000;
/** How many denied subjects' recent denials are remembered. */
const REMEMBERED_SUBJECTS = 50_000;

/** A denied record, by its place in the chain and its time. */
type Denial = { position: number; at: number };

/** What this replica knows of one subject's denials: recent ones, and the record that completed its last burst. */
type DenialState = { denials: Denial[]; lastBurst: number };

type Raise = (type: string, extra: Record<string, unknown>) => void;

type Inspected = { row: AuditRow; detail: Record<string, unknown> };

const isRequest = (action: string) => action === 'grant.issued' || action === 'grant.requested';

/**
 * Alerts derived from the sealed chain. The replica that seals a batch inspects it, so each record
 * is inspected once across replicas; the alerts go back into the log as `alert.*` records (and so
 * out through the export sinks). Rules:
 * - `alert.denied_burst`: a burst of denied requests or accesses by one subject;
 * - `alert.ended_credential_used`: a revoked, expired or suspended grant's credential presented;
 * - `alert.budget_exhausted`: a grant suspended for using up its API budget;
 * - `alert.host_mismatch`: a credential used from another address than the one that requested it.
 * What this replica saw is a cache; the store's history (which holds what other replicas sealed
 * and raised) fills it in: for each batch, one look-up at most, and none for a batch of data
 * touches by grants requested through this replica.
 */
export class Alerts {
  readonly #rules: AlertRules;
  readonly #denials = new Map<string, DenialState>();
  /** Each grant's requesting address; null when its request records carry none. */
  readonly #requestedFrom = new Map<string, string | null>();
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

  /** Drops what this replica remembers (after a batch that rolled back); the store's history fills it in again. */
  forget(): void {
    this.#denials.clear();
    this.#requestedFrom.clear();
    this.#mismatched.clear();
  }

  /** The alerts a sealed batch raises; `history` is the store's trail, this batch included. */
  async inspect(rows: readonly AuditRow[], now: number, history: AlertHistory): Promise<AuditEvent[]> {
    const batch: Inspected[] = [];
    for (const row of rows) {
      if (row.action.startsWith('alert.') || row.at < this.#since) continue;
      batch.push({ row, detail: JSON.parse(row.detail) as Record<string, unknown> });
    }
    if (batch.length === 0) return [];
    await this.#lookBack(batch, history);
    const alerts: AuditEvent[] = [];
    for (const { row, detail } of batch) {
      const raise: Raise = (type, extra) =>
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
        const burst = this.#denied(row.subject, row.position, row.at);
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

  /**
   * Fills this replica's memory from the store for what the batch needs and memory may lack: the
   * last denials and burst of each subject denied here (denials are rare: always asked), and the
   * request of each grant touched here whose address is not remembered, or that a touch here does
   * not match (another replica may have raised its mismatch already).
   */
  async #lookBack(batch: readonly Inspected[], history: AlertHistory): Promise<void> {
    // Per subject, its denials here: with the deniedBurst - 1 before them at most since its last
    // burst, they are all a burst can count.
    const subjects = new Map<string, number>();
    const grantIds = new Set<string>();
    const requestedHere = new Map<string, string>();
    for (const { row, detail } of batch) {
      if (row.outcome === 'denied' && row.subject) subjects.set(row.subject, (subjects.get(row.subject) ?? 0) + 1);
      const grantId = row.grantId;
      if (!grantId || typeof detail.source !== 'string') continue;
      if (isRequest(row.action)) requestedHere.set(grantId, detail.source);
      else if (row.action.startsWith('data.') && !this.#mismatched.has(grantId)) {
        const requested = requestedHere.get(grantId) ?? this.#requestedFrom.get(grantId);
        if (requested === undefined || (requested !== null && requested !== detail.source)) grantIds.add(grantId);
      }
    }
    if (subjects.size === 0 && grantIds.size === 0) return;
    const past = await history.alertHistory({
      grantIds: [...grantIds],
      subjects: [...subjects].map(([subject, denials]) => ({ subject, denials: denials + this.#rules.deniedBurst - 1 })),
    });
    for (const record of past) {
      if (record.grantId && grantIds.has(record.grantId)) this.#learnGrant(record.grantId, record);
      if (record.subject && subjects.has(record.subject)) this.#learnDenial(record.subject, record);
    }
    // A grant with no request on record (one older than the address check) is not asked for again.
    for (const grantId of grantIds) if (!this.#requestedFrom.has(grantId)) this.#remember(grantId, null);
  }

  #learnGrant(grantId: string, record: PastRecord): void {
    if (record.action === 'alert.host_mismatch') this.#mismatched.add(grantId);
    else if (isRequest(record.action)) {
      const source = (JSON.parse(record.detail) as Record<string, unknown>).source;
      if (typeof source === 'string') this.#remember(grantId, source);
    }
  }

  #learnDenial(subject: string, record: PastRecord): void {
    const state = this.#denialState(subject);
    if (record.action === 'alert.denied_burst') {
      const completed = (JSON.parse(record.detail) as Record<string, unknown>).record;
      if (typeof completed === 'number') state.lastBurst = Math.max(state.lastBurst, completed);
    } else if (
      record.outcome === 'denied' &&
      record.position !== null &&
      !state.denials.some((denial) => denial.position === record.position)
    ) {
      state.denials.push({ position: record.position, at: record.at });
    }
  }

  #denialState(subject: string): DenialState {
    let state = this.#denials.get(subject);
    if (!state) {
      // A cache like #requestedFrom: the store's history holds every denied subject's last denials.
      if (this.#denials.size >= REMEMBERED_SUBJECTS) this.#denials.delete(this.#denials.keys().next().value ?? '');
      state = { denials: [], lastBurst: 0 };
      this.#denials.set(subject, state);
    }
    return state;
  }

  #remember(grantId: string, source: string | null): void {
    if (!this.#requestedFrom.has(grantId) && this.#requestedFrom.size >= REMEMBERED_GRANTS) {
      this.#requestedFrom.delete(this.#requestedFrom.keys().next().value ?? '');
    }
    this.#requestedFrom.set(grantId, source);
  }

  /**
   * The burst size when this denial completes one, else 0. A burst counts the subject's denials
   * within the window up to this one and after the record that completed the last burst, so the
   * count starts over after each burst, whichever replica raised it.
   */
  #denied(subject: string, position: number, at: number): number {
    const state = this.#denialState(subject);
    const inWindow = (denial: Denial) => at - denial.at < this.#rules.deniedWindowMs;
    if (!state.denials.some((denial) => denial.position === position)) state.denials.push({ position, at });
    state.denials = state.denials.filter((denial) => denial.position > state.lastBurst && (denial.position > position || inWindow(denial)));
    const count = state.denials.filter((denial) => denial.position <= position && inWindow(denial)).length;
    if (count < this.#rules.deniedBurst) return 0;
    state.lastBurst = position;
    state.denials = state.denials.filter((denial) => denial.position > position);
    return count;
  }

  #checkHost(row: AuditRow, detail: Record<string, unknown>, raise: Raise): void {
    if (!row.grantId || typeof detail.source !== 'string') return;
    if (isRequest(row.action)) {
      this.#remember(row.grantId, detail.source);
      return;
    }
    if (!row.action.startsWith('data.')) return;
    const requested = this.#requestedFrom.get(row.grantId);
    // Once per grant (here or on another replica): a job on another host makes every access mismatch.
    if (requested === undefined || requested === null || requested === detail.source || this.#mismatched.has(row.grantId)) return;
    this.#mismatched.add(row.grantId);
    raise('alert.host_mismatch', { requestedFrom: requested, usedFrom: detail.source });
  }
}
