import { createHash, createHmac, pbkdf2, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import pg from 'pg';
import { BrokerUnreachableError, ConflictError, ExitCode, JitError, NotFoundError, UsageError } from '../../../core/errors.ts';
import { describeDatabase } from '../../store/postgres.ts';
import { ROLE_PREFIX, type RoleManager, type RoleSession, roleNameFor, type TablePrivilege } from './contracts.ts';

const pbkdf2Async = promisify(pbkdf2);

export type PgRoleManagerOptions = {
  /** Tables the resource may hand out, as "schema.table" globs: `*` matches within one part. */
  offered: string[];
  /** CONNECTION LIMIT of each grant's role (default 5). */
  connectionLimit?: number;
  /** Where jobs connect, when not the admin URL's host and port (e.g. a proxy or another address). */
  jobHost?: string;
  jobPort?: number;
};

const GRANT_ID = /^g_[0-9a-f]{20}$/;
/** Kinds of relation a scope may name: tables, partitioned tables, views, materialized views, foreign tables. */
const TABLE_KINDS = ['r', 'p', 'v', 'm', 'f'];
/** How long drop() waits for terminated backends to exit before giving up (the caller retries). */
const SESSION_EXIT_MS = 10_000;
/** The PostgreSQL error classes that mean the server is not there (08: connection, 57P: shutdown). */
const UNREACHABLE_SQLSTATE = /^(08|57P)/;
/** Classes that mean the server refused the admin login or database (28: authorization, 3D: catalog). */
const REFUSED_SQLSTATE = /^(28|3D)/;

/** The SQL keyword for each privilege; anything else is refused before it reaches SQL. */
const PRIVILEGE_SQL: Record<TablePrivilege['privilege'], string> = {
  select: 'SELECT',
  insert: 'INSERT',
  update: 'UPDATE',
  delete: 'DELETE',
};

type ResolvedTable = { oid: number; columns: Set<string> };

/** ROLE_PREFIX as a LIKE pattern (its "_" taken literally). */
const ROLE_PATTERN = `${ROLE_PREFIX.replace(/[\\%_]/g, '\\$&')}%`;
/**
 * The grant roles this resource made, by name ($1: ROLE_PATTERN): they hold an explicit CONNECT on
 * this database (create() grants it), so the roles of a broker serving another database are not ours.
 */
const OUR_ROLES = `SELECT DISTINCT r.rolname FROM pg_database d, aclexplode(d.datacl) AS a
    JOIN pg_roles r ON r.oid = a.grantee
  WHERE d.datname = current_database() AND r.rolname LIKE $1 ESCAPE '\\'`;

/**
 * The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677, the format of
 * pg_authid.rolpassword). Sending the verifier instead of the password keeps the password out of
 * server logs (log_statement), pg_stat_activity and pg_stat_statements; psql's \password does the
 * same. Only printable ASCII is accepted, for which SASLprep changes nothing.
 */
export async function scramVerifier(password: string, salt: Buffer = randomBytes(16), iterations = 4096): Promise<string> {
  const salted = await pbkdf2Async(password, salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest('base64');
  const serverKey = createHmac('sha256', salted).update('Server Key').digest('base64');
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey}:${serverKey}`;
}

const escapeRegExp = (text: string) => text.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&');

/** One "schema.table" glob as a test on the two parts; `*` never crosses the dot. */
function globMatcher(glob: string): (schema: string, table: string) => boolean {
  const parts = glob.split('.');
  if (parts.length !== 2 || parts.some((part) => part === '')) {
    throw new UsageError(`offered table "${glob}" is not a "schema.table" glob (e.g. public.* or sales.orders)`, {
      code: 'invalid_config',
    });
  }
  const [schema, table] = parts.map((part) => new RegExp(`^${part.split('*').map(escapeRegExp).join('.*')}$`, 'u'));
  return (s, t) => Boolean(schema?.test(s) && table?.test(t));
}

function roleFor(grantId: string): string {
  if (!GRANT_ID.test(grantId)) throw new UsageError(`"${grantId}" is not a grant id (g_ and 20 hex digits)`, { code: 'invalid_request' });
  return roleNameFor(grantId);
}

function checkValidity(validUntil: Date): string {
  if (Number.isNaN(validUntil.getTime())) throw new UsageError('the role validity is not a valid date', { code: 'invalid_request' });
  return pg.escapeLiteral(validUntil.toISOString());
}

function integerIn(value: number | undefined, fallback: number, min: number, max: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isInteger(result) || result < min || result > max) {
    throw new UsageError(`${name} must be a whole number from ${min} to ${max}, not ${value}`, { code: 'invalid_config' });
  }
  return result;
}

const plural = (count: number, noun: string) => `${count} ${noun}${count === 1 ? '' : 's'}`;

/** The SQL privilege, and the columns when the grant is narrower than the whole table. */
function grantStatements(privileges: readonly TablePrivilege[], role: string): string[] {
  const byTable = new Map<string, { privilege: TablePrivilege; columns: Set<string> | undefined }>();
  for (const privilege of privileges) {
    const key = JSON.stringify([privilege.schema, privilege.table, privilege.privilege]);
    const seen = byTable.get(key);
    const columns =
      privilege.columns === undefined || (seen && seen.columns === undefined)
        ? undefined
        : new Set([...(seen?.columns ?? []), ...privilege.columns]);
    byTable.set(key, { privilege, columns });
  }
  return [...byTable.keys()].sort().map((key) => {
    const { privilege, columns } = byTable.get(key) as { privilege: TablePrivilege; columns: Set<string> | undefined };
    const list = columns === undefined ? '' : ` (${[...columns].map((column) => pg.escapeIdentifier(column)).join(', ')})`;
    const table = `${pg.escapeIdentifier(privilege.schema)}.${pg.escapeIdentifier(privilege.table)}`;
    return `GRANT ${PRIVILEGE_SQL[privilege.privilege]}${list} ON TABLE ${table} TO ${pg.escapeIdentifier(role)}`;
  });
}

/**
 * Database roles for grants on one PostgreSQL database (issue 5, docs/postgres.md), through an
 * admin connection. Connects lazily: a database that is down is reported by the call that needs
 * it (code database_unreachable), so the broker starts and revocations are retried.
 */
export class PgRoleManager implements RoleManager {
  readonly target: { host: string; port: number; database: string };
  readonly #pool: pg.Pool;
  /** host:port/database, never the URL: it carries the admin password. */
  readonly #where: string;
  readonly #offered: { glob: string; matches: (schema: string, table: string) => boolean }[];
  readonly #connectionLimit: number;

  private constructor(adminUrl: string, options: PgRoleManagerOptions) {
    if (options.offered.length === 0) throw new UsageError('a postgres resource offers no tables', { code: 'invalid_config' });
    this.#offered = options.offered.map((glob) => ({ glob, matches: globMatcher(glob) }));
    this.#connectionLimit = integerIn(options.connectionLimit, 5, 1, 10_000, 'connectionLimit');
    this.#where = describeDatabase(adminUrl);
    // pg's own parser, so the target is what the admin connection itself would reach.
    const parsed = new pg.Client({ connectionString: adminUrl });
    this.target = {
      host: options.jobHost ?? parsed.host,
      port: integerIn(options.jobPort, parsed.port, 1, 65_535, 'jobPort'),
      database: parsed.database ?? parsed.user ?? 'postgres',
    };
    this.#pool = new pg.Pool({ connectionString: adminUrl, max: 3, connectionTimeoutMillis: 10_000, lock_timeout: 10_000 });
    // An idle admin connection losing its server must not crash the broker; the next call reports it.
    this.#pool.on('error', () => {});
    // Nor may one losing it while checked out (the database going away mid-call): the call in
    // progress fails with the error, and the broker retries it.
    this.#pool.on('connect', (client) => client.on('error', () => {}));
  }

  static async open(adminUrl: string, options: PgRoleManagerOptions): Promise<PgRoleManager> {
    return new PgRoleManager(adminUrl, options);
  }

  async check(privileges: readonly TablePrivilege[]): Promise<void> {
    await this.#withClient('check the scoped tables', (client) => this.#resolve(client, privileges));
  }

  async create(
    grantId: string,
    password: string,
    privileges: readonly TablePrivilege[],
    options: { login: boolean; validUntil: Date },
  ): Promise<void> {
    const role = roleFor(grantId);
    if (!/^[\x20-\x7e]{1,1000}$/.test(password))
      throw new UsageError('a role password must be printable ASCII', { code: 'invalid_request' });
    const validUntil = checkValidity(options.validUntil);
    const verifier = await scramVerifier(password);
    const name = pg.escapeIdentifier(role);
    await this.#withClient(`create role ${role}`, (client) =>
      this.#transaction(client, async () => {
        const tables = await this.#resolve(client, privileges);
        await client.query(
          `CREATE ROLE ${name} WITH ${options.login ? 'LOGIN' : 'NOLOGIN'} PASSWORD ${pg.escapeLiteral(verifier)} VALID UNTIL ${validUntil} ` +
            `CONNECTION LIMIT ${this.#connectionLimit} NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS`,
        );
        // PUBLIC usually has CONNECT already; a hardened database that revoked it still lets the job in.
        const database = (await client.query<{ name: string }>('SELECT current_database() AS name')).rows[0]?.name ?? this.target.database;
        await client.query(`GRANT CONNECT ON DATABASE ${pg.escapeIdentifier(database)} TO ${name}`);
        for (const schema of [...new Set(privileges.map((privilege) => privilege.schema))].sort()) {
          await client.query(`GRANT USAGE ON SCHEMA ${pg.escapeIdentifier(schema)} TO ${name}`);
        }
        for (const statement of grantStatements(privileges, role)) await client.query(statement);
        await this.#grantSerialSequences(client, privileges, tables, name);
        await this.#refuseCreate(client, role);
      }),
    );
  }

  async setValidity(grantId: string, options: { login: boolean; validUntil: Date }): Promise<void> {
    const role = roleFor(grantId);
    const validUntil = checkValidity(options.validUntil);
    await this.#withClient(`change the validity of role ${role}`, async (client) => {
      try {
        await client.query(`ALTER ROLE ${pg.escapeIdentifier(role)} WITH ${options.login ? 'LOGIN' : 'NOLOGIN'} VALID UNTIL ${validUntil}`);
      } catch (error) {
        if (error instanceof pg.DatabaseError && error.code === '42704') {
          throw new NotFoundError(`role ${role} does not exist in ${this.#where}`, { code: 'role_not_found', cause: error });
        }
        throw error;
      }
    });
  }

  async drop(grantId: string): Promise<string[]> {
    const role = roleFor(grantId);
    const name = pg.escapeIdentifier(role);
    const gone = [`role ${role} already gone`];
    return this.#withClient(`drop role ${role}`, async (client) => {
      if ((await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role])).rowCount === 0) return gone;
      try {
        // First, so no new session starts while the open ones are ended.
        await client.query(`ALTER ROLE ${name} NOLOGIN`);
      } catch (error) {
        if (error instanceof pg.DatabaseError && error.code === '42704') return gone; // dropped meanwhile
        throw error;
      }
      const terminated = await this.#terminateSessions(client, role);
      await this.#transaction(client, async () => {
        // Revokes every privilege granted to the role here and on shared objects (databases), and
        // drops anything it owns. DROP ROLE alone would succeed with sessions still open, which is
        // why they were ended first.
        await client.query(`DROP OWNED BY ${name}`);
        await client.query(`DROP ROLE IF EXISTS ${name}`);
      });
      return [
        `login disabled for role ${role}`,
        `${plural(terminated, 'session')} terminated`,
        'privileges revoked',
        `role ${role} dropped`,
      ];
    });
  }

  async listRoles(): Promise<string[]> {
    return this.#withClient('list grant roles', async (client) => {
      const result = await client.query<{ rolname: string }>(`${OUR_ROLES} ORDER BY r.rolname`, [ROLE_PATTERN]);
      return result.rows.map((row) => row.rolname);
    });
  }

  async listSessions(): Promise<RoleSession[]> {
    return this.#withClient('list the sessions of grant roles', async (client) => {
      // Never the query column: statement text may hold literals (and is not what is recorded).
      const result = await client.query<{
        pid: number;
        role: string;
        database: string | null;
        address: string | null;
        application_name: string | null;
        backend_start: Date | null;
      }>(
        `SELECT s.pid, s.usename AS role, s.datname AS database, host(s.client_addr) AS address,
                s.application_name, s.backend_start
           FROM pg_stat_activity s
          WHERE s.backend_type = 'client backend' AND s.usename IN (${OUR_ROLES})
          ORDER BY s.backend_start, s.pid`,
        [ROLE_PATTERN],
      );
      return result.rows.map((row) => ({
        pid: row.pid,
        role: row.role,
        database: row.database,
        address: row.address,
        applicationName: row.application_name || null,
        backendStart: row.backend_start === null ? null : row.backend_start.getTime(),
      }));
    });
  }

  async close(): Promise<void> {
    await this.#pool.end();
  }

  /**
   * The tables the privileges name, refused in this order: a malformed privilege, a table not
   * offered (before looking it up, so a scope cannot probe for tables outside the offer), a table
   * that does not exist, a column that does not exist.
   */
  async #resolve(client: pg.PoolClient, privileges: readonly TablePrivilege[]): Promise<Map<string, ResolvedTable>> {
    const offered = this.#offered.map((entry) => entry.glob).join(', ');
    for (const { schema, table, columns, privilege } of privileges) {
      if (!Object.hasOwn(PRIVILEGE_SQL, privilege))
        throw new UsageError(`"${privilege}" is not a table privilege`, { code: 'invalid_scope' });
      if (columns !== undefined && privilege === 'delete') {
        throw new UsageError(`delete on ${schema}.${table} cannot name columns: a row is deleted whole`, { code: 'invalid_scope' });
      }
      if (columns?.length === 0) throw new UsageError(`the column list for ${schema}.${table} is empty`, { code: 'invalid_scope' });
      if (!this.#offered.some((entry) => entry.matches(schema, table))) {
        throw new UsageError(`table ${schema}.${table} is not offered by this resource (offered: ${offered})`, {
          code: 'table_not_offered',
        });
      }
    }
    const result = await client.query<{ schema: string; table: string; oid: number; columns: string[] | null }>(
      `SELECT n.nspname AS schema, c.relname AS table, c.oid::int8 AS oid,
              array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL) AS columns
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relkind = ANY($3::"char"[]) AND (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
        GROUP BY n.nspname, c.relname, c.oid`,
      [privileges.map((privilege) => privilege.schema), privileges.map((privilege) => privilege.table), TABLE_KINDS],
    );
    const tables = new Map(
      result.rows.map((row) => [`${row.schema}.${row.table}`, { oid: Number(row.oid), columns: new Set(row.columns ?? []) }]),
    );
    for (const { schema, table, columns } of privileges) {
      const found = tables.get(`${schema}.${table}`);
      if (!found)
        throw new UsageError(`table ${schema}.${table} does not exist in ${this.#where} (offered: ${offered})`, { code: 'unknown_table' });
      const missing = columns?.find((column) => !found.columns.has(column));
      if (missing !== undefined) {
        throw new UsageError(`table ${schema}.${table} has no column "${missing}" (columns: ${[...found.columns].join(', ')})`, {
          code: 'unknown_column',
        });
      }
    }
    return tables;
  }

  /**
   * INSERT into a table with a serial column calls nextval() on the column's sequence, which needs
   * USAGE on it (identity columns need nothing). Only sequences owned by the granted tables.
   */
  async #grantSerialSequences(
    client: pg.PoolClient,
    privileges: readonly TablePrivilege[],
    tables: Map<string, ResolvedTable>,
    name: string,
  ): Promise<void> {
    const oids = privileges.filter((privilege) => privilege.privilege === 'insert').map((p) => tables.get(`${p.schema}.${p.table}`)?.oid);
    if (oids.length === 0) return;
    const sequences = await client.query<{ schema: string; sequence: string }>(
      `SELECT DISTINCT n.nspname AS schema, s.relname AS sequence
         FROM pg_depend d
         JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
         JOIN pg_namespace n ON n.oid = s.relnamespace
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a'
          AND d.refobjid = ANY($1::oid[])
        ORDER BY 1, 2`,
      [oids],
    );
    for (const { schema, sequence } of sequences.rows) {
      await client.query(`GRANT USAGE ON SEQUENCE ${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(sequence)} TO ${name}`);
    }
  }

  /**
   * The role must not create objects. It was given no CREATE, but it also holds what PUBLIC holds
   * (PostgreSQL before 15 gave PUBLIC CREATE on schema public); jit does not change database-wide
   * privileges, so it refuses instead. TEMP (PUBLIC's by default) is allowed: temporary objects
   * live only as long as the session, which drop() terminates.
   */
  async #refuseCreate(client: pg.PoolClient, role: string): Promise<void> {
    const result = await client.query<{ place: string }>(
      `SELECT 'schema ' || quote_ident(nspname) AS place FROM pg_namespace WHERE has_schema_privilege($1, oid, 'CREATE')
       UNION ALL
       SELECT 'database ' || quote_ident(current_database()) WHERE has_database_privilege($1, current_database(), 'CREATE')`,
      [role],
    );
    if (result.rows.length > 0) {
      const places = result.rows.map((row) => row.place).join(', ');
      throw new UsageError(`a grant's role could create objects in ${places} of ${this.#where}, through PUBLIC or another grant`, {
        code: 'role_could_create',
        hint: `revoke CREATE there from PUBLIC (e.g. REVOKE CREATE ON SCHEMA public FROM PUBLIC, the PostgreSQL 15 default); jit does not change database-wide privileges`,
      });
    }
  }

  /**
   * Terminates every backend of the role, in any database of the cluster, and waits (bounded) until
   * none is left. Returns how many were terminated.
   */
  async #terminateSessions(client: pg.PoolClient, role: string): Promise<number> {
    const terminated = new Set<number>();
    const deadline = Date.now() + SESSION_EXIT_MS;
    for (;;) {
      // pg_terminate_backend(pid, timeout) waits up to timeout ms for the backend to exit.
      const result = await client.query<{ pid: number }>(
        'SELECT pid, pg_terminate_backend(pid, 1000) FROM pg_stat_activity WHERE usename = $1',
        [role],
      );
      if (result.rows.length === 0) return terminated.size;
      for (const row of result.rows) terminated.add(row.pid);
      if (Date.now() > deadline) {
        throw new JitError(
          `${plural(result.rows.length, 'session')} of role ${role} did not end after termination; login is disabled`,
          ExitCode.unexpected,
          503,
          'role_sessions_survive',
          {
            hint: 'the revocation is retried; check pg_stat_activity for backends stuck in I/O',
          },
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  async #transaction(client: pg.PoolClient, work: () => Promise<void>): Promise<void> {
    await client.query('BEGIN');
    try {
      await work();
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      throw error;
    }
  }

  /** One admin connection for `work`; pg's errors become JitErrors that name `doing` and the database, never the URL. */
  async #withClient<T>(doing: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (error) {
      throw this.#translate(error, doing);
    }
    let broken: Error | undefined;
    try {
      return await work(client);
    } catch (error) {
      if (!(error instanceof pg.DatabaseError) && !(error instanceof JitError)) broken = error as Error;
      throw this.#translate(error, doing);
    } finally {
      // A connection that failed outside SQL is not reused.
      client.release(broken);
    }
  }

  #translate(error: unknown, doing: string): unknown {
    if (error instanceof JitError || !(error instanceof Error)) return error;
    if (error instanceof pg.DatabaseError && REFUSED_SQLSTATE.test(error.code ?? '')) {
      return new UsageError(`${this.#where} refused the admin connection: ${error.message}`, {
        code: 'database_refused',
        hint: "check the user, password and database in the postgres resource's admin URL",
        cause: error,
      });
    }
    if (error instanceof pg.DatabaseError && !UNREACHABLE_SQLSTATE.test(error.code ?? '')) {
      if (error.code === '42710') return new ConflictError(`could not ${doing}: ${error.message}`, { code: 'role_exists', cause: error });
      return new JitError(`could not ${doing} in ${this.#where}: ${error.message}`, ExitCode.unexpected, 500, 'database_error', {
        cause: error,
      });
    }
    const reason = (error as NodeJS.ErrnoException).code ?? error.message;
    return new BrokerUnreachableError(`cannot reach ${this.#where} to ${doing} (${reason})`, {
      code: 'database_unreachable',
      hint: 'check that PostgreSQL is running and reachable (a revocation is retried until it is done; a request is not)',
      cause: error,
    });
  }
}
