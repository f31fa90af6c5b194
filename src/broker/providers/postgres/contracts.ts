/**
 * The postgres provider (docs/postgres.md): a `postgres` resource turns a grant's scopes into a
 * database role that exists only for the grant's life. roles.ts talks to the database;
 * provider.ts ties it to the grant lifecycle.
 */

/** One table a grant may touch, with the privilege and (optionally) the columns. */
export type TablePrivilege = {
  schema: string;
  table: string;
  /** undefined: the whole table. */
  columns: string[] | undefined;
  privilege: 'select' | 'insert' | 'update' | 'delete';
};

/** The role for a grant: its name is derived from the grant id (ROLE_PREFIX + hex). */
export const ROLE_PREFIX = 'jit_g_';

export function roleNameFor(grantId: string): string {
  return `${ROLE_PREFIX}${grantId.replace(/^g_/, '')}`;
}

export function grantIdFromRole(role: string): string | undefined {
  return role.startsWith(ROLE_PREFIX) && /^[0-9a-f]{20}$/.test(role.slice(ROLE_PREFIX.length))
    ? `g_${role.slice(ROLE_PREFIX.length)}`
    : undefined;
}

/**
 * One backend (session) of a grant's role, as pg_stat_activity shows it to the admin. Never the
 * query text. Fields PostgreSQL hides from an admin without pg_read_all_stats are null.
 */
export type RoleSession = {
  pid: number;
  role: string;
  /** The database the session is connected to (a role may reach others that PUBLIC can connect to). */
  database: string | null;
  /** The client's IP address; null for a Unix-socket connection or when hidden. */
  address: string | null;
  /** What the client calls itself (PGAPPNAME, application_name): its own text, at most 63 bytes. */
  applicationName: string | null;
  /** When the backend started, epoch ms: with the pid, what tells one session from a later one. */
  backendStart: number | null;
};

export interface RoleManager {
  /**
   * Refuses (UsageError, code unknown_table / table_not_offered / unknown_column) privileges on
   * tables or columns that do not exist or that the resource does not offer (`offered` globs like
   * "public.*"), before anything is created.
   */
  check(privileges: readonly TablePrivilege[]): Promise<void>;
  /**
   * Creates the grant's role: LOGIN only when `login`, PASSWORD, VALID UNTIL `validUntil`,
   * CONNECTION LIMIT, NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS, and exactly the
   * privileges (plus USAGE on their schemas); nothing else. All in one transaction: on any error
   * nothing is left behind.
   */
  create(
    grantId: string,
    password: string,
    privileges: readonly TablePrivilege[],
    options: { login: boolean; validUntil: Date },
  ): Promise<void>;
  /** ALTER ROLE ... LOGIN/NOLOGIN VALID UNTIL: activation and renewal; open sessions keep working. */
  setValidity(grantId: string, options: { login: boolean; validUntil: Date }): Promise<void>;
  /**
   * Ends the role: NOLOGIN, revoke its privileges, terminate its backends (a running query is cut
   * off), drop what it owns, drop it. Idempotent: a role already gone is success. Throws when the
   * database cannot be reached (the caller retries).
   */
  drop(grantId: string): Promise<string[]>;
  /**
   * The roles with ROLE_PREFIX this resource's database granted CONNECT to (every role create()
   * makes): the reconciler compares them with live grants. Roles of other databases are not listed.
   */
  listRoles(): Promise<string[]>;
  /** The open sessions of the roles listRoles() lists, in any database of the cluster. */
  listSessions(): Promise<RoleSession[]>;
  /** Where jobs connect: host, port, database (from the admin URL unless configured). */
  readonly target: { host: string; port: number; database: string };
  close(): Promise<void>;
}
