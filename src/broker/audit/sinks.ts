import { createHmac } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { Clock } from '../grants/service.ts';
import type { BrokerStore } from '../store/store.ts';
import { type AuditRecord, withCheckpoints } from './log.ts';

/** broker.yaml `audit.sinks[]` (docs/audit.md#export). */
export type SinkConfig =
  | { name: string; type: 'file'; path: string; actions: string[] }
  | { name: string; type: 'webhook'; url: string; secret: string | undefined; actions: string[] };

/** Records per delivery (one file append, one webhook POST). */
const BATCH = 200;
/** How long a replica's claim on a sink lasts without renewal: a dead replica's sinks move on after this. */
const LEASE_MS = 30_000;
const MAX_BACKOFF_MS = 5 * 60_000;

/** The record matches one of `patterns` (exact, or a prefix ending in `.*`); no patterns: every record. */
export function actionMatches(action: string, patterns: readonly string[]): boolean {
  return (
    patterns.length === 0 ||
    patterns.some((pattern) => (pattern.endsWith('.*') ? action.startsWith(pattern.slice(0, -1)) : action === pattern))
  );
}

/**
 * Delivers the sealed chain to each export sink in order, at least once: a sink's position
 * moves only after a delivery succeeded, so a crash or failure repeats the batch (receivers
 * deduplicate by `seq`, or by the Idempotency-Key header). One replica delivers a sink at a time
 * (a lease in the store); a failing sink is retried with back-off doubling up to 5 minutes.
 */
export class SinkExporter {
  readonly #store: BrokerStore;
  readonly #clock: Clock;
  readonly #sinks: SinkConfig[];
  readonly #owner: string;
  readonly #keyId: string;
  readonly #retryAt = new Map<string, number>();
  #running: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: { store: BrokerStore; clock: Clock; sinks: SinkConfig[]; owner: string; keyId: string }) {
    this.#store = options.store;
    this.#clock = options.clock;
    this.#sinks = options.sinks;
    this.#owner = options.owner;
    this.#keyId = options.keyId;
  }

  start(intervalMs: number): void {
    if (this.#sinks.length === 0) return;
    this.#timer = setInterval(() => {
      this.exportNow().catch((error: Error) => process.stderr.write(`jit broker: audit export failed: ${error.message}\n`));
    }, intervalMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#running?.catch(() => undefined);
  }

  /** One pass over every sink that is due; concurrent callers share the pass. */
  exportNow(): Promise<void> {
    this.#running ??= this.#pass().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #pass(): Promise<void> {
    for (const sink of this.#sinks) {
      const now = this.#clock.now();
      if ((this.#retryAt.get(sink.name) ?? 0) > now) continue;
      const cursor = await this.#store.leaseSink(sink.name, this.#owner, now, now + LEASE_MS, 0);
      if (!cursor) continue;
      let position = cursor.position;
      try {
        for (;;) {
          const rows = await this.#store.queryAudit({ afterPosition: position, limit: BATCH });
          if (rows.length === 0) break;
          const records = (await withCheckpoints(this.#store, rows)).filter((record) => actionMatches(record.action, sink.actions));
          if (records.length > 0) await this.#deliver(sink, records);
          position = rows.at(-1)?.position ?? position;
          await this.#store.saveSink(sink.name, this.#owner, { position, attempts: 0, lastError: null });
          if (rows.length < BATCH) break;
          // A long backlog renews the lease batch by batch; lost to another replica, stop here.
          const renewedAt = this.#clock.now();
          if (!(await this.#store.leaseSink(sink.name, this.#owner, renewedAt, renewedAt + LEASE_MS, 0))) break;
        }
        this.#retryAt.delete(sink.name);
      } catch (error) {
        const attempts = cursor.attempts + 1;
        const message = (error as Error).message;
        this.#retryAt.set(sink.name, this.#clock.now() + Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (attempts - 1)));
        await this.#store.saveSink(sink.name, this.#owner, { position, attempts, lastError: message });
        process.stderr.write(`jit broker: audit sink ${sink.name}: delivery failed (attempt ${attempts}): ${message}\n`);
      }
    }
  }

  async #deliver(sink: SinkConfig, records: AuditRecord[]): Promise<void> {
    if (sink.type === 'file') {
      const file = await open(sink.path, 'a', 0o600);
      try {
        await file.appendFile(`${records.map((record) => JSON.stringify(record)).join('\n')}\n`);
        await file.datasync();
      } finally {
        await file.close();
      }
      return;
    }
    const body = JSON.stringify({ records });
    const timestamp = String(Math.floor(this.#clock.now() / 1000));
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      'idempotency-key': `jit-audit-${this.#keyId}-${records[0]?.seq}-${records.at(-1)?.seq}`,
      'x-jit-timestamp': timestamp,
    };
    // HMAC-SHA256 over "timestamp.body", as Stripe and GitHub sign webhooks: the receiver checks
    // it with the shared secret and refuses stale timestamps (replays).
    if (sink.secret)
      headers['x-jit-signature'] = `sha256=${createHmac('sha256', sink.secret).update(`${timestamp}.${body}`).digest('hex')}`;
    const response = await fetch(sink.url, { method: 'POST', headers, body, signal: AbortSignal.timeout(10_000) }).catch((error: Error) => {
      // fetch's own errors name no URL, but their cause may: say only where, and why.
      const cause = (error.cause as { code?: string } | undefined)?.code ?? error.name;
      throw new Error(`cannot reach ${new URL(sink.url).origin} (${cause})`);
    });
    await response.body?.cancel();
    // The origin only: a webhook URL's path or query may hold its own secret (Slack-style hooks).
    if (!response.ok) throw new Error(`${new URL(sink.url).origin} answered HTTP ${response.status}`);
  }
}
