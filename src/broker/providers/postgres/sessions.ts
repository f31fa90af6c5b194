import type { Clock } from '../../grants/service.ts';
import { aboutGrant, type BrokerStore } from '../../store/store.ts';
import { grantIdFromRole, type RoleSession } from './contracts.ts';
import type { TableProvider } from './provider.ts';

type ObservedSession = RoleSession & { resource: string };

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/**
 * Records who logs in to a database under a grant (docs/postgres.md#audit). A job's role talks to
 * PostgreSQL directly, so the broker never sees a statement; what it can see is the sessions, in
 * pg_stat_activity. Every `intervalMs` (and just before a grant's role is dropped) this looks at the
 * sessions of grant roles and appends one `data.session` record per backend it has not recorded
 * yet: the grant, role, database, pid, client address, application name and backend start, never
 * the query text. A backend already on the trail (recorded before a restart, or by another replica
 * that got there first) is not recorded again.
 */
export class SessionObserver {
  readonly #tables: TableProvider;
  readonly #store: BrokerStore;
  readonly #clock: Clock;
  /** Backends recorded (or found recorded) and still open, by key, with their resource. */
  readonly #known = new Map<string, string>();
  /** Resources whose failure was said on stderr, until they answer again. */
  readonly #failing = new Set<string>();
  #tail: Promise<unknown> = Promise.resolve();
  #queued: Promise<number> | undefined;
  #looking = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: { tables: TableProvider; store: BrokerStore; clock: Clock }) {
    this.#tables = options.tables;
    this.#store = options.store;
    this.#clock = options.clock;
    // A session opened since the last look is recorded before the drop terminates it.
    this.#tables.beforeDrop(() => this.observe());
  }

  /** Looks every `intervalMs` until stop(); a look still running (a slow database) is not queued behind. */
  start(intervalMs: number): void {
    this.#timer = setInterval(() => {
      if (this.#looking || this.#queued) return;
      this.observe().catch((error: Error) => process.stderr.write(`jit broker: recording database sessions failed: ${error.message}\n`));
    }, intervalMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#tail;
  }

  /**
   * One look at the sessions open now; resolves with how many were recorded. Calls while a look
   * runs share the one after it, so what they wait for saw the sessions open when they called.
   */
  observe(): Promise<number> {
    if (this.#queued) return this.#queued;
    const round = this.#tail.then(() => {
      this.#queued = undefined;
      return this.#look();
    });
    this.#queued = round;
    this.#tail = round.catch(() => undefined);
    return round;
  }

  async #look(): Promise<number> {
    this.#looking = true;
    try {
      const now = this.#clock.now();
      const { sessions, listed, failed } = await this.#tables.listSessions();
      this.#report(listed, failed);
      const open = new Set<string>();
      let recorded = 0;
      for (const session of sessions) {
        const key = JSON.stringify([session.resource, session.pid, session.backendStart]);
        open.add(key);
        if (this.#known.has(key)) continue;
        // A failed record is not remembered: the next look tries again.
        if (await this.#record(session, now)) recorded += 1;
        this.#known.set(key, session.resource);
      }
      // Ended backends are forgotten (a pid comes back with a later start); those of a database not
      // asked this time are kept.
      for (const [key, resource] of this.#known) if (!open.has(key) && listed.includes(resource)) this.#known.delete(key);
      return recorded;
    } finally {
      this.#looking = false;
    }
  }

  /** Appends the session's record unless its grant is unknown (an orphan role) or it is on the trail already. */
  async #record(session: ObservedSession, now: number): Promise<boolean> {
    const grantId = grantIdFromRole(session.role);
    const grant = grantId === undefined ? undefined : await this.#store.getGrant(grantId);
    if (!grant) return false;
    if (await this.#onTrail(grant.id, session)) return false;
    await this.#store.appendEvent(
      aboutGrant(grant, now, {
        type: 'data.session',
        detail: {
          resource: session.resource,
          role: session.role,
          database: session.database,
          pid: session.pid,
          address: session.address,
          applicationName: session.applicationName,
          backendStart: iso(session.backendStart),
          // A session of a grant that has ended (its role's drop still pending) is worth a look.
          ...(grant.state === 'active' ? {} : { grantState: grant.state }),
        },
      }),
    );
    return true;
  }

  async #onTrail(grantId: string, session: ObservedSession): Promise<boolean> {
    const recorded = await this.#store.queryAudit({ grantId, action: 'data.session', limit: 1000 });
    const start = iso(session.backendStart);
    return recorded.some((row) => {
      const detail = JSON.parse(row.detail) as { pid?: unknown; backendStart?: unknown; resource?: unknown };
      return detail.pid === session.pid && detail.backendStart === start && detail.resource === session.resource;
    });
  }

  /** A database that cannot be asked is said once on stderr (not every second), and again once it answers. */
  #report(listed: string[], failed: { resource: string; message: string }[]): void {
    for (const { resource, message } of failed) {
      if (this.#failing.has(resource)) continue;
      this.#failing.add(resource);
      process.stderr.write(`jit broker: cannot see the database sessions of resource ${resource}, not recording them: ${message}\n`);
    }
    for (const resource of listed) {
      if (this.#failing.delete(resource))
        process.stderr.write(`jit broker: recording the database sessions of resource ${resource} again\n`);
    }
  }
}
