import { randomUUID } from 'node:crypto';
import { access, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { ConflictError, UsageError } from '../core/errors.ts';
import { VERSION } from '../core/version.ts';
import { buildApi } from './api/server.ts';
import { loadSigningKey, resolveSinks, trustedKeys } from './audit/config.ts';
import { AuditLog } from './audit/log.ts';
import { SinkExporter } from './audit/sinks.ts';
import { type BrokerConfig, initialConfigYaml, loadBrokerConfig, parseBrokerConfig } from './config.ts';
import { type Clock, GrantService } from './grants/service.ts';
import { OidcExchange } from './oidc/exchange.ts';
import { BROKER_HOST, PrincipalService } from './principals/service.ts';
import { TableProvider } from './providers/postgres/provider.ts';
import { SessionObserver } from './providers/postgres/sessions.ts';
import { openStore } from './store/index.ts';
import type { BrokerStore } from './store/store.ts';

export const CONFIG_FILE = 'broker.yaml';

export type RunningBroker = {
  url: string;
  config: BrokerConfig;
  app: FastifyInstance;
  grants: GrantService;
  principals: PrincipalService;
  audit: AuditLog;
  close(): Promise<void>;
};

const systemClock: Clock = { now: () => Date.now() };

/**
 * Creates a broker directory: a documented broker.yaml, the data root, the store and the
 * first admin's API token, which is returned once and kept only as its hash.
 */
export async function initBroker(
  dir: string,
  admin: string,
  options: { postgresUrlEnv?: string } = {},
): Promise<{ token: string; config: string; subject: string }> {
  const configFile = path.resolve(dir, CONFIG_FILE);
  if (
    await access(configFile).then(
      () => true,
      () => false,
    )
  ) {
    throw new ConflictError(`${configFile} already exists`, {
      code: 'already_initialised',
      hint: 'start it with `jit broker start --dir DIR`, or pick a new --dir',
    });
  }
  const subject = `user:${admin}`;
  const yaml = initialConfigYaml(subject, options);
  const config = parseBrokerConfig(yaml, configFile);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const resource of Object.values(config.resources)) if (resource.kind === 'files') await mkdir(resource.root, { recursive: true });
  const store = await openStore(config);
  let token: string;
  try {
    const principals = new PrincipalService({ store, clock: systemClock });
    ({ token } = await principals.create(BROKER_HOST, { subject, roles: ['admin'], label: 'jit broker init' }));
  } finally {
    await store.close();
  }
  await writeFile(configFile, yaml, { mode: 0o600, flag: 'wx' });
  return { token, config: configFile, subject };
}

/** A resource whose root is missing is a config error at start, not an HTTP 500 at first use. */
export async function checkResourceRoots(config: BrokerConfig, configFile: string): Promise<void> {
  for (const [name, resource] of Object.entries(config.resources)) {
    if (resource.kind === 'postgres' || resource.kind === 'http') {
      // Where the secret comes from (a postgres admin URL, an API's upstream key) must be there at
      // start; the database or API itself may be down. The secret is never read into a message.
      const [envKey, env, fileKey, file] =
        resource.kind === 'postgres'
          ? ['urlEnv', resource.urlEnv, 'urlFile', resource.urlFile]
          : ['secretEnv', resource.secretEnv, 'secretFile', resource.secretFile];
      const present =
        env !== undefined
          ? Boolean(process.env[env])
          : await readFile(file ?? '', 'utf8').then(
              (text) => text.trim() !== '',
              () => false,
            );
      if (!present) {
        const where = env !== undefined ? `${envKey}: ${env} is not set` : `${fileKey}: ${file} is missing or empty`;
        throw new UsageError(`${configFile}: resources.${name}.${where}`, {
          code: 'invalid_config',
          hint:
            resource.kind === 'postgres'
              ? 'give the broker the admin URL (postgres://ADMIN@HOST:PORT/DATABASE) there before starting it'
              : "give the broker the upstream API's key there before starting it",
        });
      }
      continue;
    }
    const isDirectory = await stat(resource.root).then(
      (stats) => stats.isDirectory(),
      () => false,
    );
    if (!isDirectory) {
      throw new UsageError(`${configFile}: resources.${name}.root: ${resource.root} is not a directory`, {
        code: 'invalid_config',
        hint: 'create it, or point root at an existing directory',
      });
    }
  }
}

/** How often the audit log seals what was appended (and live streams see it), and export sinks deliver. */
const SEAL_INTERVAL_MS = 100;
const EXPORT_INTERVAL_MS = 1000;

/**
 * The audit log of a starting broker: its signing key (created on first start), the keys it
 * trusts for older checkpoints, the export sinks, and a `config.loaded` record saying which
 * configuration this replica runs (its SHA-256, not its text).
 */
async function openAuditLog(config: BrokerConfig, store: BrokerStore, clock: Clock) {
  const key = await loadSigningKey(config.audit);
  const trusted = await trustedKeys(config.audit, key);
  const sinks = resolveSinks(config.audit);
  const log = new AuditLog({
    store,
    clock,
    key,
    checkpointEvery: config.audit.checkpointEvery,
    checkpointIntervalMs: config.audit.checkpointIntervalSeconds * 1000,
    alerts: { deniedBurst: config.audit.alerts.deniedBurst, deniedWindowMs: config.audit.alerts.deniedWindowSeconds * 1000 },
    trusted,
  });
  const exporter = new SinkExporter({ store, clock, sinks, owner: `${hostname()}:${process.pid}:${randomUUID()}`, keyId: key.keyId });
  await log.append({
    at: clock.now(),
    type: 'config.loaded',
    actor: 'system',
    subject: null,
    grantId: null,
    detail: {
      sha256: config.sha256,
      resources: Object.keys(config.resources),
      rules: config.rules.map((rule) => rule.name),
      deny: config.deny.map((rule) => rule.name),
      auditKey: key.keyId,
      sinks: sinks.map((sink) => sink.name),
      host: hostname(),
      version: VERSION,
    },
  });
  return {
    log,
    start: () => {
      log.start(SEAL_INTERVAL_MS);
      exporter.start(EXPORT_INTERVAL_MS);
    },
    stop: async () => {
      await exporter.stop();
      await log.stop();
      // What the last requests appended is sealed before the store closes.
      await log.seal().catch(() => 0);
      await exporter.exportNow().catch(() => undefined);
    },
  };
}

/** Loads DIR/broker.yaml (refusing a broken one before anything listens) and serves it. */
export async function startBroker(options: { dir: string; host: string; port: number; clock?: Clock }): Promise<RunningBroker> {
  const configFile = path.join(options.dir, CONFIG_FILE);
  const config = await loadBrokerConfig(configFile);
  await checkResourceRoots(config, configFile);
  const store = await openStore(config);
  let url = '';
  const clock = options.clock ?? systemClock;
  const tables = TableProvider.configured(config) ? new TableProvider(config) : undefined;
  const sessions = tables ? new SessionObserver({ tables, store, clock }) : undefined;
  const grants = new GrantService({ config, store, clock, publicUrl: () => config.publicUrl ?? url, tables });
  const principals = new PrincipalService({ store, clock });
  const oidc = new OidcExchange({ config, store, clock });
  const audit = await openAuditLog(config, store, clock).catch(async (error: unknown) => {
    // A missing signing key or sink secret stops the start: nothing is left open behind it.
    await store.close();
    await tables?.close();
    throw error;
  });
  const app = buildApi({
    config,
    grants,
    principals,
    oidc,
    version: VERSION,
    audit: audit.log,
  });
  try {
    await app.listen({ host: options.host, port: options.port });
  } catch (error) {
    await audit.stop();
    await store.close();
    await tables?.close();
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
      throw new UsageError(`cannot listen on ${options.host}:${options.port} (${code})`, {
        code: 'cannot_listen',
        hint:
          code === 'EADDRINUSE'
            ? 'another process holds that port: pick another with --port (0 picks a free one)'
            : 'check --host and --port',
      });
    }
    throw error;
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  url = `http://${options.host.includes(':') ? `[${options.host}]` : options.host}:${port}`;
  // Roles left by a crash are dropped at start, then every minute by the sweeper.
  if (tables) {
    grants.reconcileNow().catch((error: Error) => process.stderr.write(`jit broker: role reconciliation failed: ${error.message}\n`));
  }
  const sweeper = setInterval(() => {
    grants.sweep().catch((error: Error) => process.stderr.write(`jit broker: expiry sweep failed: ${error.message}\n`));
  }, config.sweepIntervalSeconds * 1000);
  sweeper.unref();
  // Database sessions under grants are recorded as often as the sweeper looks for expiries.
  sessions?.start(config.sweepIntervalSeconds * 1000);
  audit.start();
  let closing: Promise<void> | undefined;
  return {
    url,
    config,
    app,
    grants,
    principals,
    audit: audit.log,
    close: () => {
      closing ??= (async () => {
        clearInterval(sweeper);
        await app.close();
        await grants.sweeping();
        await sessions?.stop();
        await audit.stop();
        await store.close();
        await tables?.close();
      })();
      return closing;
    },
  };
}
