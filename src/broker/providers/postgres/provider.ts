import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { UsageError } from '../../../core/errors.ts';
import type { Scope } from '../../../core/scope.ts';
import type { BrokerConfig, PostgresResource } from '../../config.ts';
import { grantIdFromRole, type RoleManager, type RoleSession, roleNameFor, type TablePrivilege } from './contracts.ts';
import { PgRoleManager } from './roles.ts';

type OpenManager = (adminUrl: string, resource: PostgresResource) => Promise<RoleManager>;

/** How long a revocation waits for the last look at the grant's database sessions (SessionObserver). */
const BEFORE_DROP_LOOK_MS = 1_000;

const openPgManager: OpenManager = (adminUrl, resource) =>
  PgRoleManager.open(adminUrl, {
    offered: resource.tables,
    connectionLimit: resource.connectionLimit,
    ...(resource.host ? { jobHost: resource.host } : {}),
    ...(resource.port ? { jobPort: resource.port } : {}),
  });

/**
 * The postgres provider in the grant lifecycle (docs/postgres.md): a grant's table scopes become
 * one database role for the grant's life. Created when the grant is (NOLOGIN while it waits for
 * approval), its validity moved on activation and renewal, dropped when the grant ends, with its
 * sessions. The admin URL is read from the variable or file the resource names, at first use,
 * and never printed.
 */
export class TableProvider {
  readonly #config: BrokerConfig;
  readonly #open: OpenManager;
  readonly #managers = new Map<string, Promise<RoleManager>>();
  #beforeDrop: (() => Promise<unknown>) | undefined;

  constructor(config: BrokerConfig, open: OpenManager = openPgManager) {
    this.#config = config;
    this.#open = open;
  }

  /** Whether the broker has any postgres resource at all. */
  static configured(config: BrokerConfig): boolean {
    return Object.values(config.resources).some((resource) => resource.kind === 'postgres');
  }

  /** The postgres resources among `scopes` (at most one, as `check` insists). */
  resourcesOf(scopes: readonly Scope[]): string[] {
    return [
      ...new Set(scopes.filter((scope) => this.#config.resources[scope.resource]?.kind === 'postgres').map((scope) => scope.resource)),
    ];
  }

  /**
   * Refuses, before anything is created, table scopes the database cannot serve: a missing table
   * or column, one the resource does not offer, or tables of two databases in one grant (a job
   * gets one set of PG* variables).
   */
  async check(scopes: readonly Scope[]): Promise<void> {
    const resources = this.resourcesOf(scopes);
    if (resources.length > 1) {
      throw new UsageError(`one grant reaches one database: these scopes name ${resources.join(' and ')}`, {
        code: 'invalid_scope',
        hint: 'request each database in a grant (and a job) of its own',
      });
    }
    for (const name of resources) await (await this.#manager(name)).check(privilegesOf(scopes, name));
  }

  /** Creates the grant's role; returns the job's PG* variables (with the role's password, shown only here). */
  async provision(
    grantId: string,
    scopes: readonly Scope[],
    options: { login: boolean; validUntil: Date },
  ): Promise<Record<string, string>> {
    const [name] = this.resourcesOf(scopes);
    if (name === undefined) return {};
    const manager = await this.#manager(name);
    const password = randomBytes(24).toString('base64url');
    await manager.create(grantId, password, privilegesOf(scopes, name), options);
    const user = roleNameFor(grantId);
    const { host, port, database } = manager.target;
    const authority = `${encodeURIComponent(user)}:${encodeURIComponent(password)}@${host.includes(':') ? `[${host}]` : host}:${port}`;
    return {
      PGHOST: host,
      PGPORT: String(port),
      PGDATABASE: database,
      PGUSER: user,
      PGPASSWORD: password,
      DATABASE_URL: `postgresql://${authority}/${encodeURIComponent(database)}`,
    };
  }

  /** Activation and renewal: the role may log in until `validUntil`; sessions already open go on. */
  async setValidity(grantId: string, resources: readonly string[], options: { login: boolean; validUntil: Date }): Promise<void> {
    for (const name of resources) await (await this.#manager(name)).setValidity(grantId, options);
  }

  /**
   * Runs `hook` before each drop (the session observer looks once more, so a session opened since
   * its last look is recorded before the drop terminates it). A failing hook does not stop the drop.
   */
  beforeDrop(hook: () => Promise<unknown>): void {
    this.#beforeDrop = hook;
  }

  /** Drops the grant's role in each resource, its sessions terminated; returns what was done. Throws to be retried. */
  async deprovision(grantId: string, resources: readonly string[]): Promise<string[]> {
    // The last look at sessions is worth a moment, never the revocation: a slow database waits no longer.
    const look = resources.length > 0 ? this.#beforeDrop?.().catch(() => undefined) : undefined;
    if (look) await Promise.race([look, sleep(BEFORE_DROP_LOOK_MS, undefined, { ref: false })]);
    const actions: string[] = [];
    for (const name of resources) actions.push(...(await (await this.#manager(name)).drop(grantId)));
    return actions;
  }

  /**
   * Drops roles whose grant is not live (orphans of a crash between creating a role and recording
   * its grant, or of a drop that never ran). A role younger than `graceMs` (by its time-ordered
   * grant id) is left alone: its grant may be being recorded right now.
   */
  async reconcile(isLive: (grantId: string) => Promise<boolean>, now: number, graceMs = 60_000): Promise<string[]> {
    const dropped: string[] = [];
    for (const [name, resource] of Object.entries(this.#config.resources)) {
      if (resource.kind !== 'postgres') continue;
      const manager = await this.#manager(name);
      for (const role of await manager.listRoles()) {
        const grantId = grantIdFromRole(role);
        if (!grantId || now - createdAtOf(grantId) < graceMs || (await isLive(grantId))) continue;
        // One role that cannot be dropped now does not stop the others; the next pass tries again.
        const done = await manager.drop(grantId).then(
          () => true,
          () => false,
        );
        if (done) dropped.push(`${name}: ${role}`);
      }
    }
    return dropped;
  }

  /**
   * The open sessions of grant roles, per postgres resource. A resource whose database cannot be
   * asked now is in `failed` (with the reason, never the URL); the others are still listed.
   */
  async listSessions(): Promise<{
    sessions: (RoleSession & { resource: string })[];
    listed: string[];
    failed: { resource: string; message: string }[];
  }> {
    const sessions: (RoleSession & { resource: string })[] = [];
    const listed: string[] = [];
    const failed: { resource: string; message: string }[] = [];
    for (const [name, resource] of Object.entries(this.#config.resources)) {
      if (resource.kind !== 'postgres') continue;
      try {
        for (const session of await (await this.#manager(name)).listSessions()) sessions.push({ ...session, resource: name });
        listed.push(name);
      } catch (error) {
        failed.push({ resource: name, message: (error as Error).message });
      }
    }
    return { sessions, listed, failed };
  }

  async close(): Promise<void> {
    const managers = [...this.#managers.values()];
    this.#managers.clear();
    for (const manager of managers) await (await manager.catch(() => undefined))?.close();
  }

  #manager(name: string): Promise<RoleManager> {
    let manager = this.#managers.get(name);
    if (!manager) {
      const resource = this.#config.resources[name];
      if (resource?.kind !== 'postgres') return Promise.reject(new UsageError(`"${name}" is not a postgres resource`));
      manager = adminUrlOf(name, resource).then((url) => this.#open(url, resource));
      // A failed open is not kept: the next call (a retry) tries again.
      manager.catch(() => this.#managers.delete(name));
      this.#managers.set(name, manager);
    }
    return manager;
  }
}

/** The table privileges `scopes` ask of resource `name`. */
export function privilegesOf(scopes: readonly Scope[], name: string): TablePrivilege[] {
  return scopes
    .filter((scope) => scope.resource === name)
    .map((scope) => {
      const [schema = '', table = ''] = scope.path.split('.');
      return { schema, table, columns: scope.columns, privilege: scope.action as TablePrivilege['privilege'] };
    });
}

/** When a time-ordered grant id (ids.ts newTimeOrderedId) was made; 0 for an older random one. */
function createdAtOf(grantId: string): number {
  const millis = Number.parseInt(grantId.slice(2, 14), 16);
  return Number.isFinite(millis) && millis < Date.now() + 86_400_000 ? millis : 0;
}

/** The admin URL, from the variable or file the resource names; errors name where, never the value. */
async function adminUrlOf(name: string, resource: PostgresResource): Promise<string> {
  if (resource.urlEnv !== undefined) {
    const url = process.env[resource.urlEnv];
    if (!url) {
      throw new UsageError(`resources.${name}.urlEnv names ${resource.urlEnv}, which is not set`, {
        code: 'invalid_config',
        hint: `export ${resource.urlEnv}=postgres://ADMIN@HOST:PORT/DATABASE before starting the broker`,
      });
    }
    return url;
  }
  const file = resource.urlFile ?? '';
  const url = (await readFile(file, 'utf8').catch(() => '')).trim();
  if (!url) {
    throw new UsageError(`resources.${name}.urlFile: ${file} is missing or empty`, {
      code: 'invalid_config',
      hint: 'write the admin URL (postgres://ADMIN@HOST:PORT/DATABASE) into it, readable by the broker only',
    });
  }
  return url;
}
