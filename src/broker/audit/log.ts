import type { KeyObject } from 'node:crypto';
import type { AuditRecord, VerifyReport } from '../../core/audit.ts';
import type { Clock } from '../grants/service.ts';
import type { AlertHistory, AuditEvent, AuditQuery, AuditRow, BrokerStore, ChainHead, SealPlan, UnsealedRow } from '../store/store.ts';
import { type AlertRules, Alerts } from './alerts.ts';
import { canonicalDetail, GENESIS, recordHash, type SigningKey, signCheckpoint } from './chain.ts';
import { verifyStore } from './verify.ts';

export type { AuditRecord };

export function toRecord(row: AuditRow): AuditRecord {
  return {
    seq: row.position,
    at: new Date(row.at).toISOString(),
    action: row.action,
    actor: row.actor,
    subject: row.subject,
    grant: row.grantId,
    scope: row.scope,
    outcome: row.outcome,
    details: JSON.parse(row.detail) as Record<string, unknown>,
    hash: row.hash,
  };
}

/** Records of `rows`, each carrying the checkpoint signed at its position, if one was. */
export async function withCheckpoints(store: BrokerStore, rows: AuditRow[]): Promise<AuditRecord[]> {
  const [first, last] = [rows[0], rows.at(-1)];
  if (!first || !last) return [];
  const signed = new Map((await store.listCheckpoints({ from: first.position, to: last.position })).map((cp) => [cp.position, cp]));
  return rows.map((row) => {
    const record = toRecord(row);
    const checkpoint = signed.get(row.position);
    return checkpoint
      ? { ...record, checkpoint: { at: new Date(checkpoint.at).toISOString(), keyId: checkpoint.keyId, signature: checkpoint.signature } }
      : record;
  });
}

export type AuditLogOptions = {
  store: BrokerStore;
  clock: Clock;
  key: SigningKey;
  /** A checkpoint is signed once this many records were sealed since the last one... */
  checkpointEvery: number;
  /** ...or this long after the last one, whichever comes first (when anything new was sealed). */
  checkpointIntervalMs: number;
  alerts?: AlertRules;
  /** Keys checkpoints may be signed with, by key id: this key's and audit.trustedKeys (docs/audit.md#keys). */
  trusted?: Map<string, KeyObject>;
};

const SEAL_BATCH = 2000;
const IDLE_CHECK_MS = 1000;

/**
 * The broker's audit log: events are appended by the lifecycle (in the transaction of the change
 * they describe) and sealed here into the hash chain, in batches, by one replica at a time. After
 * each batch this replica's listeners (live streams) hear of it; other replicas' streams poll.
 */
export class AuditLog {
  readonly #store: BrokerStore;
  readonly #clock: Clock;
  readonly #key: SigningKey;
  readonly #every: number;
  readonly #intervalMs: number;
  readonly #alerts: Alerts;
  readonly #trusted: Map<string, KeyObject>;
  readonly #listeners = new Set<() => void>();
  #sealing: Promise<number> | undefined;
  /** When this replica last looked for a head left unsigned by quiet (a checkpoint is due by time alone). */
  #idleCheckedAt = 0;
  #again = false;
  #soon: NodeJS.Timeout | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: AuditLogOptions) {
    this.#store = options.store;
    this.#clock = options.clock;
    this.#key = options.key;
    this.#every = options.checkpointEvery;
    this.#intervalMs = options.checkpointIntervalMs;
    this.#alerts = new Alerts(options.alerts, options.clock.now());
    this.#trusted = options.trusted ?? new Map([[options.key.keyId, options.key.publicKey]]);
  }

  get key(): SigningKey {
    return this.#key;
  }

  /** Seals every `intervalMs` (and soon after each poke) until stop(). */
  start(intervalMs: number): void {
    this.#timer = setInterval(() => this.#sealInBackground(), intervalMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    clearTimeout(this.#soon);
    await this.#sealing?.catch(() => undefined);
  }

  /** Something was appended: seal it shortly (batched with whatever else arrives meanwhile). */
  poke(): void {
    if (this.#soon || !this.#timer) return;
    this.#soon = setTimeout(() => {
      this.#soon = undefined;
      this.#sealInBackground();
    }, 20);
    this.#soon.unref();
  }

  #sealInBackground(): void {
    this.seal().catch((error: Error) => process.stderr.write(`jit broker: sealing the audit log failed: ${error.message}\n`));
  }

  /** Calls `listener` after each batch this replica seals; returns the unsubscribe. */
  onSealed(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Seals everything unsealed now, batch after batch; one run at a time per replica (a call
   * during a run makes it go round once more). Resolves with how many records this call sealed.
   */
  seal(): Promise<number> {
    if (this.#sealing) {
      this.#again = true;
      return this.#sealing;
    }
    this.#sealing = this.#sealAll().finally(() => {
      this.#sealing = undefined;
    });
    return this.#sealing;
  }

  async #sealAll(): Promise<number> {
    let total = 0;
    do {
      this.#again = false;
      for (;;) {
        const sealed: AuditRow[] = [];
        // Once a second, an empty round still signs a checkpoint when checkpointInterval has passed
        // over unsigned records: quiet must not leave the newest records unsigned.
        const now = this.#clock.now();
        const evenIfNone = now - this.#idleCheckedAt >= IDLE_CHECK_MS;
        if (evenIfNone) this.#idleCheckedAt = now;
        let raised = 0;
        // The alerts are appended with the batch, before the next one can be sealed: the next
        // step's history holds them, whichever replica takes it.
        const derive = async (history: AlertHistory) => {
          const alerts = await this.#alerts.inspect(sealed, this.#clock.now(), history);
          raised = alerts.length;
          return alerts;
        };
        let count: number | undefined;
        try {
          count = await this.#store.sealEvents(SEAL_BATCH, (head, rows) => this.#plan(head, rows, sealed), { evenIfNone, derive });
        } catch (error) {
          // A batch rolled back after derive ran: what the alerts remembered of it never happened.
          // Memory is only a cache of the store's history, which the next batch refills.
          this.#alerts.forget();
          throw error;
        }
        // undefined: another replica is sealing; it will notice these rows.
        if (!count) break;
        total += count;
        for (const listener of this.#listeners) listener();
        if (raised > 0) this.#again = true;
        if (count < SEAL_BATCH) break;
      }
    } while (this.#again);
    return total;
  }

  #plan(head: ChainHead, rows: UnsealedRow[], out: AuditRow[]): SealPlan {
    let previous = head.position === 0 ? GENESIS : head.hash;
    let position = head.position;
    const sealed = rows.map((row) => {
      position += 1;
      const detail = canonicalDetail(row.detail);
      const hash = recordHash(previous, { ...row, position, detail });
      previous = hash;
      out.push({ ...row, position, detail, hash });
      return { seq: row.seq, position, hash, detail };
    });
    const now = this.#clock.now();
    const last = head.checkpoint;
    const unsigned = position > (last?.position ?? 0);
    const due = unsigned && (!last || position - last.position >= this.#every || now - last.at >= this.#intervalMs);
    return { sealed, checkpoint: due ? signCheckpoint(this.#key, position, previous, now) : undefined };
  }

  /** Sealed records matching `query`; what was appended before the call is sealed first. */
  async query(query: AuditQuery): Promise<AuditRecord[]> {
    await this.seal();
    return this.tail(query);
  }

  /** Sealed records matching `query`, with their checkpoints, without sealing first (the live stream's poll). */
  async tail(query: AuditQuery): Promise<AuditRecord[]> {
    return withCheckpoints(this.#store, await this.#store.queryAudit(query));
  }

  /** Seals what is pending, then re-computes the whole chain and checks its checkpoints. */
  async verify(): Promise<VerifyReport> {
    await this.seal();
    return verifyStore(this.#store, this.#trusted);
  }

  /** The position of the last sealed record (0 for an empty chain). */
  async headPosition(): Promise<number> {
    return (await this.#store.chainHead()).position;
  }

  /** Appends an event outside any grant change (config load). */
  async append(event: AuditEvent): Promise<void> {
    await this.#store.appendEvent(event);
    this.poke();
  }
}
