import { UsageError } from '../../core/errors.ts';

/**
 * The broker's schema, as an ordered list of versions. Each engine applies the versions it has
 * not recorded in `schema_migrations` when a store opens, inside one transaction, so a broker
 * either starts on the whole schema or not at all. Versions are never edited once released: a
 * change is a new entry at the end.
 */
export type Migration = { version: number; name: string; sqlite: string; postgres: string };

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'principals, grants, events',
    // IF NOT EXISTS: a broker.db made before migrations existed already has these tables.
    sqlite: `
      CREATE TABLE IF NOT EXISTS principals (
        subject TEXT NOT NULL,
        token_hash TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
      );
      CREATE TABLE IF NOT EXISTS grants (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        scopes TEXT NOT NULL,
        reason TEXT,
        state TEXT NOT NULL,
        credential_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        heartbeat_deadline INTEGER NOT NULL,
        ended_at INTEGER,
        end_reason TEXT,
        decision TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS grants_active ON grants (state, expires_at, heartbeat_deadline);
      CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        type TEXT NOT NULL,
        subject TEXT,
        grant_id TEXT,
        detail TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS events_grant ON events (grant_id);
    `,
    postgres: `
      CREATE TABLE principals (
        subject TEXT NOT NULL,
        token_hash TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL
      );
      CREATE TABLE grants (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        scopes JSONB NOT NULL,
        reason TEXT,
        state TEXT NOT NULL,
        credential_hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        heartbeat_deadline BIGINT NOT NULL,
        ended_at BIGINT,
        end_reason TEXT,
        decision TEXT NOT NULL
      );
      CREATE INDEX grants_active ON grants (state, expires_at, heartbeat_deadline);
      CREATE TABLE events (
        seq BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        type TEXT NOT NULL,
        subject TEXT,
        grant_id TEXT,
        detail JSONB NOT NULL
      );
      CREATE INDEX events_grant ON events (grant_id);
    `,
  },
  {
    version: 2,
    name: 'sweeper indexes on active grants',
    // The sweeper asks for active grants past either deadline; one partial index per deadline
    // lets both engines answer that from the index however many ended grants have piled up.
    sqlite: `
      CREATE INDEX grants_due_ttl ON grants (expires_at) WHERE state = 'active';
      CREATE INDEX grants_due_heartbeat ON grants (heartbeat_deadline) WHERE state = 'active';
    `,
    postgres: `
      CREATE INDEX grants_due_ttl ON grants (expires_at) WHERE state = 'active';
      CREATE INDEX grants_due_heartbeat ON grants (heartbeat_deadline) WHERE state = 'active';
    `,
  },
  {
    version: 3,
    name: 'drop the index the sweeper indexes replaced',
    // grants_active (state, expires_at, heartbeat_deadline) serves no query the partial indexes of
    // version 2 do not, and every issue and heartbeat paid for writing it (npm run bench:broker).
    sqlite: 'DROP INDEX IF EXISTS grants_active;',
    postgres: 'DROP INDEX IF EXISTS grants_active;',
  },
  {
    version: 4,
    name: 'principal tokens: public id, roles, label, creator, revocation',
    // Tokens made before roles existed (broker init's) were all an admin's, so they stay admin.
    // token_id is what lists show and revoke names; the hash stays the lookup key.
    sqlite: `
      ALTER TABLE principals ADD COLUMN token_id TEXT;
      ALTER TABLE principals ADD COLUMN roles TEXT;
      ALTER TABLE principals ADD COLUMN label TEXT;
      ALTER TABLE principals ADD COLUMN created_by TEXT;
      ALTER TABLE principals ADD COLUMN revoked_at INTEGER;
      UPDATE principals SET token_id = 'tok_' || lower(hex(randomblob(10))), roles = '["admin"]';
      CREATE UNIQUE INDEX principals_token_id ON principals (token_id);
    `,
    postgres: `
      ALTER TABLE principals ADD COLUMN token_id TEXT;
      ALTER TABLE principals ADD COLUMN roles JSONB;
      ALTER TABLE principals ADD COLUMN label TEXT;
      ALTER TABLE principals ADD COLUMN created_by TEXT;
      ALTER TABLE principals ADD COLUMN revoked_at BIGINT;
      UPDATE principals SET token_id = 'tok_' || substr(md5(random()::text || token_hash), 1, 20), roles = '["admin"]';
      ALTER TABLE principals ALTER COLUMN token_id SET NOT NULL, ALTER COLUMN roles SET NOT NULL;
      CREATE UNIQUE INDEX principals_token_id ON principals (token_id);
    `,
  },
  {
    version: 5,
    name: 'approvals, renewal, approval timeout',
    // ttl_seconds: the lifetime a pending grant gets when approved, and what renewals extend by.
    // activated_at: when it became usable (the policy's max TTL counts from there).
    // approval_deadline: when a pending request times out. Grants made before this version were
    // issued active at once.
    sqlite: `
      ALTER TABLE grants ADD COLUMN ttl_seconds INTEGER;
      ALTER TABLE grants ADD COLUMN activated_at INTEGER;
      ALTER TABLE grants ADD COLUMN approval_deadline INTEGER;
      UPDATE grants SET ttl_seconds = (expires_at - created_at) / 1000, activated_at = created_at;
      CREATE INDEX grants_pending ON grants (approval_deadline, heartbeat_deadline) WHERE state = 'pending';
      CREATE TABLE approvals (
        grant_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT,
        at INTEGER NOT NULL,
        PRIMARY KEY (grant_id, approver)
      );
    `,
    postgres: `
      ALTER TABLE grants ADD COLUMN ttl_seconds BIGINT;
      ALTER TABLE grants ADD COLUMN activated_at BIGINT;
      ALTER TABLE grants ADD COLUMN approval_deadline BIGINT;
      UPDATE grants SET ttl_seconds = (expires_at - created_at) / 1000, activated_at = created_at;
      ALTER TABLE grants ALTER COLUMN ttl_seconds SET NOT NULL;
      CREATE INDEX grants_pending ON grants (approval_deadline, heartbeat_deadline) WHERE state = 'pending';
      CREATE TABLE approvals (
        grant_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT,
        at BIGINT NOT NULL,
        PRIMARY KEY (grant_id, approver)
      );
    `,
  },
  {
    version: 6,
    name: 'deprovisioning retried until done',
    // One row per ended grant whose provider cleanup (dropping its database role) has not
    // succeeded yet: retried with capped back-off by whichever replica claims it first.
    sqlite: `
      CREATE TABLE deprovisions (
        grant_id TEXT PRIMARY KEY,
        resources TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        done_at INTEGER
      );
      CREATE INDEX deprovisions_due ON deprovisions (next_attempt_at) WHERE done_at IS NULL;
    `,
    postgres: `
      CREATE TABLE deprovisions (
        grant_id TEXT PRIMARY KEY,
        resources JSONB NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at BIGINT NOT NULL,
        last_error TEXT,
        created_at BIGINT NOT NULL,
        done_at BIGINT
      );
      CREATE INDEX deprovisions_due ON deprovisions (next_attempt_at) WHERE done_at IS NULL;
    `,
  },
  {
    version: 7,
    name: 'cheaper issue: one sweeper index, no AUTOINCREMENT on events (SQLite)',
    // Every issued grant paid for two partial indexes (one per deadline); one expression index on
    // the earlier deadline serves the sweeper's query as well. On SQLite, AUTOINCREMENT made every
    // event insert also update sqlite_sequence: events are never deleted, so a plain INTEGER
    // PRIMARY KEY stays append-only and ordered (npm run bench:broker).
    sqlite: `
      DROP INDEX IF EXISTS grants_due_ttl;
      DROP INDEX IF EXISTS grants_due_heartbeat;
      CREATE INDEX grants_due ON grants (min(expires_at, heartbeat_deadline)) WHERE state = 'active';
      CREATE TABLE events_v7 (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        type TEXT NOT NULL,
        subject TEXT,
        grant_id TEXT,
        detail TEXT NOT NULL
      );
      INSERT INTO events_v7 (seq, at, type, subject, grant_id, detail) SELECT seq, at, type, subject, grant_id, detail FROM events;
      DROP TABLE events;
      ALTER TABLE events_v7 RENAME TO events;
      CREATE INDEX events_grant ON events (grant_id);
    `,
    postgres: `
      DROP INDEX IF EXISTS grants_due_ttl;
      DROP INDEX IF EXISTS grants_due_heartbeat;
      CREATE INDEX grants_due ON grants (LEAST(expires_at, heartbeat_deadline)) WHERE state = 'active';
    `,
  },
  {
    version: 8,
    name: 'per-grant usage of API budgets',
    // Counted with one upsert per call, so replicas add up on the same row.
    sqlite: `
      CREATE TABLE usage (grant_id TEXT PRIMARY KEY, requests INTEGER NOT NULL, bytes INTEGER NOT NULL);
    `,
    postgres: `
      CREATE TABLE usage (grant_id TEXT PRIMARY KEY, requests BIGINT NOT NULL, bytes BIGINT NOT NULL);
    `,
  },
  {
    version: 9,
    name: 'audit trail: actor, scope, outcome, hash chain, checkpoints, export sinks',
    // Events are appended as before (with the change they describe, in its transaction) and sealed
    // into the hash chain shortly after by one replica at a time: `position` is the gap-free chain
    // order, `hash` the chain hash (src/broker/audit/chain.ts). Events written before this version
    // are sealed like new ones. On PostgreSQL detail becomes TEXT: the chain hashes its exact text.
    // Each index costs every event insert (every grant issue): the position index holds sealed rows
    // only, and SQLite needs no index of unsealed rows, because with one writer they are always the
    // rows after the last sealed one (PostgreSQL commits out of seq order, so it keeps one).
    // events_subject serves a requester's own records (GET /v1/audit) without scanning the trail;
    // partial, it is written when a record is sealed, not on the issue path.
    // ANALYZE: sealing a backlog (this migration makes one) is slow on a table without statistics.
    sqlite: `
      ALTER TABLE events ADD COLUMN actor TEXT;
      ALTER TABLE events ADD COLUMN scope TEXT;
      ALTER TABLE events ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok';
      ALTER TABLE events ADD COLUMN position INTEGER;
      ALTER TABLE events ADD COLUMN hash TEXT;
      UPDATE events SET actor = COALESCE(json_extract(detail, '$.by'), subject),
        outcome = CASE WHEN type IN ('grant.refused', 'grant.denied', 'data.refused') THEN 'denied'
          WHEN type IN ('grant.provider_error', 'grant.deprovision_failed') THEN 'error'
          WHEN type = 'grant.requested' THEN 'pending' ELSE 'ok' END;
      CREATE UNIQUE INDEX events_position ON events (position) WHERE position IS NOT NULL;
      CREATE INDEX events_subject ON events (subject, position) WHERE position IS NOT NULL;
      CREATE TABLE audit_checkpoints (
        position INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        at INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL
      );
      CREATE TABLE audit_sinks (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        owner TEXT,
        lease_until INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
      );
    `,
    postgres: `
      ALTER TABLE events ADD COLUMN actor TEXT, ADD COLUMN scope TEXT, ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok',
        ADD COLUMN position BIGINT, ADD COLUMN hash TEXT;
      UPDATE events SET actor = COALESCE(detail->>'by', subject),
        outcome = CASE WHEN type IN ('grant.refused', 'grant.denied', 'data.refused') THEN 'denied'
          WHEN type IN ('grant.provider_error', 'grant.deprovision_failed') THEN 'error'
          WHEN type = 'grant.requested' THEN 'pending' ELSE 'ok' END;
      ALTER TABLE events ALTER COLUMN detail TYPE TEXT USING detail::text;
      CREATE UNIQUE INDEX events_position ON events (position) WHERE position IS NOT NULL;
      CREATE INDEX events_subject ON events (subject, position) WHERE position IS NOT NULL;
      CREATE INDEX events_unsealed ON events (seq) WHERE position IS NULL;
      CREATE TABLE audit_checkpoints (
        position BIGINT PRIMARY KEY,
        hash TEXT NOT NULL,
        at BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL
      );
      CREATE TABLE audit_sinks (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        owner TEXT,
        lease_until BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
      );
      ANALYZE events;
    `,
  },
  {
    version: 10,
    name: 'OIDC sessions of CI jobs',
    // One row per exchange of a CI identity token (issue 9); expired rows are deleted by the next
    // exchange. The bearer is kept only as its hash, like API tokens.
    sqlite: `
      CREATE TABLE oidc_sessions (
        session_id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        issuer TEXT NOT NULL,
        claims TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
      );
      CREATE INDEX oidc_sessions_expiry ON oidc_sessions (expires_at);
    `,
    postgres: `
      CREATE TABLE oidc_sessions (
        session_id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        issuer TEXT NOT NULL,
        claims JSONB NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
      );
      CREATE INDEX oidc_sessions_expiry ON oidc_sessions (expires_at);
    `,
  },
  {
    version: 11,
    name: 'alert history indexes',
    // The alert rules of every replica look back on the trail (src/broker/audit/alerts.ts): a
    // grant's request records and host_mismatch alerts, a subject's last denied records and its
    // last burst alert. events_grant gains the type, so a grant's requests are found without
    // walking its data touches; that costs an insert nothing measurable, where a partial index of
    // the requests cost SQLite appends ~15% (npm run bench:audit). The other two are partial,
    // holding rare rows only; queries repeat their predicates verbatim, as SQLite needs.
    sqlite: `
      DROP INDEX events_grant;
      CREATE INDEX events_grant ON events (grant_id, type);
      CREATE INDEX events_denied ON events (subject, position) WHERE outcome = 'denied' AND position IS NOT NULL;
      CREATE INDEX events_alerts ON events (subject, type, seq) WHERE outcome = 'alert';
    `,
    postgres: `
      DROP INDEX events_grant;
      CREATE INDEX events_grant ON events (grant_id, type);
      CREATE INDEX events_denied ON events (subject, position) WHERE outcome = 'denied' AND position IS NOT NULL;
      CREATE INDEX events_alerts ON events (subject, type, seq) WHERE outcome = 'alert';
    `,
  },
];

export const SCHEMA_VERSION = MIGRATIONS.at(-1)?.version ?? 0;

export const MIGRATIONS_TABLE = `CREATE TABLE IF NOT EXISTS schema_migrations (
  version INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  applied_at BIGINT NOT NULL
)`;

/**
 * The migrations a database at `applied` still needs. A database that a newer broker has already
 * migrated is refused: this broker would not know what its tables mean.
 */
export function pendingMigrations(applied: readonly number[], where: string): Migration[] {
  const newest = Math.max(0, ...applied);
  if (newest > SCHEMA_VERSION) {
    throw new UsageError(`${where} has schema version ${newest}; this broker knows versions up to ${SCHEMA_VERSION}`, {
      code: 'store_too_new',
      hint: 'run the newer jit broker that migrated it',
    });
  }
  return MIGRATIONS.filter((migration) => !applied.includes(migration.version));
}
