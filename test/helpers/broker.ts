import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initBroker, type RunningBroker, startBroker } from '../../src/broker/broker.ts';
import type { Clock } from '../../src/broker/grants/service.ts';
import { PostgresStore } from '../../src/broker/store/postgres.ts';
import type { Role } from '../../src/core/caller.ts';
import { hashSecret, newId } from '../../src/core/ids.ts';
import { createTestDatabase, type TestDatabase } from './postgres.ts';

export type TestBroker = {
  url: string;
  /** The admin token `jit broker init` minted (subject user:admin). */
  token: string;
  dir: string;
  dataDir: string;
  /** The broker's PostgreSQL database, for `{ store: 'postgres' }`. */
  database: TestDatabase | undefined;
  broker: RunningBroker;
  /** Stops the broker (idempotent); the directory stays until `cleanup`. */
  stop(): Promise<void>;
  /** Starts it again on the same port and store. */
  restart(): Promise<void>;
  cleanup(): Promise<void>;
};

export const SAMPLE_FILES: Record<string, string> = {
  'train/shard-0000.jsonl': '{"prompt":"2+2","completion":"4"}\n{"prompt":"capital of France","completion":"Paris"}\n',
  'train/shard-0001.jsonl': '{"prompt":"3*3","completion":"9"}\n',
  'eval/holdout.jsonl': '{"prompt":"secret eval item","completion":"do not leak"}\n',
};

/**
 * A real broker in this process on a free loopback port, in its own temporary directory, with
 * the sample datasets. `heartbeatTimeout` shortens the lapse window for tests that kill jit.
 * `clock` replaces the broker's clock. `policy` replaces the policy section (approval rules, groups). `store: 'postgres'` puts the store in a new PostgreSQL database (dropped by `cleanup`), so more
 * replicas can be started on the same directory with `startBroker`.
 */
export async function startTestBroker(
  options: {
    heartbeatTimeout?: string;
    files?: Record<string, string>;
    store?: 'sqlite' | 'postgres';
    clock?: Clock;
    /** Replaces broker.yaml's whole `policy:` section (YAML starting with `policy:`). */
    policy?: string;
    /** broker.yaml trustedProxies. */
    trustedProxies?: string[];
    /** More resources, as YAML lines indented under `resources:` (e.g. a postgres resource). */
    resources?: string;
    approvalTimeout?: string;
    /** More top-level YAML appended to broker.yaml (e.g. an `oidc:` section). */
    extraYaml?: string;
  } = {},
): Promise<TestBroker> {
  const dir = await mkdtemp(path.join(tmpdir(), 'jit-broker-'));
  const { token } = await initBroker(dir, 'admin');
  const dataDir = path.join(dir, 'data', 'datasets');
  for (const [name, content] of Object.entries(options.files ?? SAMPLE_FILES)) {
    await mkdir(path.dirname(path.join(dataDir, name)), { recursive: true });
    await writeFile(path.join(dataDir, name), content);
  }
  if (options.policy !== undefined || options.approvalTimeout !== undefined) {
    const configFile = path.join(dir, 'broker.yaml');
    let yaml = await readFile(configFile, 'utf8');
    if (options.policy !== undefined) yaml = `${yaml.slice(0, yaml.indexOf('\npolicy:'))}\n${options.policy}`;
    if (options.approvalTimeout !== undefined) yaml = yaml.replace(/approvalTimeout: \S+/, `approvalTimeout: ${options.approvalTimeout}`);
    await writeFile(configFile, yaml);
  }
  if (options.resources) {
    const configFile = path.join(dir, 'broker.yaml');
    const yaml = await readFile(configFile, 'utf8');
    await writeFile(configFile, yaml.replace(/\nresources:\n/, `\nresources:\n${options.resources.replace(/\n?$/, '\n')}`));
  }
  if (options.extraYaml) {
    const configFile = path.join(dir, 'broker.yaml');
    await writeFile(configFile, `${await readFile(configFile, 'utf8')}\n${options.extraYaml.replace(/\n?$/, '\n')}`);
  }
  if (options.trustedProxies) {
    const configFile = path.join(dir, 'broker.yaml');
    await writeFile(configFile, `${await readFile(configFile, 'utf8')}\ntrustedProxies: ${JSON.stringify(options.trustedProxies)}\n`);
  }
  if (options.heartbeatTimeout) {
    const configFile = path.join(dir, 'broker.yaml');
    const yaml = await readFile(configFile, 'utf8');
    await writeFile(
      configFile,
      yaml
        .replace(/heartbeatTimeout: \S+/, `heartbeatTimeout: ${options.heartbeatTimeout}`)
        .replace(/sweepInterval: \S+/, 'sweepInterval: 1s'),
    );
  }
  const database = options.store === 'postgres' ? await usePostgres(dir, token) : undefined;
  let broker = await startBroker({ dir, host: '127.0.0.1', port: 0, clock: options.clock });
  const port = Number(new URL(broker.url).port);
  const handle: TestBroker = {
    url: broker.url,
    token,
    dir,
    dataDir,
    database,
    broker,
    stop: () => broker.close(),
    async restart() {
      broker = await startBroker({ dir, host: '127.0.0.1', port, clock: options.clock });
      handle.broker = broker;
    },
    async cleanup() {
      await broker.close();
      await database?.drop();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return handle;
}

/** Points DIR/broker.yaml at a new database and registers init's admin token there. */
async function usePostgres(dir: string, token: string): Promise<TestDatabase> {
  const database = await createTestDatabase();
  const configFile = path.join(dir, 'broker.yaml');
  await writeFile(configFile, `${await readFile(configFile, 'utf8')}\nstore:\n  engine: postgres\n  url: ${database.url}\n`);
  const store = await PostgresStore.open(database.url, { maxConnections: 1 });
  try {
    await store.addPrincipal({
      tokenId: newId('tok'),
      subject: 'user:admin',
      tokenHash: hashSecret(token),
      roles: ['admin'],
      label: 'jit broker init',
      createdBy: 'local:broker-host',
      createdAt: Date.now(),
      revokedAt: null,
    });
  } finally {
    await store.close();
  }
  return database;
}

/**
 * Mints an API token for `subject` with exactly `roles` on the running broker (through its
 * PrincipalService, so into whichever store it runs on) and returns the token.
 */
export async function createToken(broker: TestBroker, subject: string, roles: Role[], label?: string): Promise<string> {
  const created = await broker.broker.principals.create('user:admin', { subject, roles, ...(label === undefined ? {} : { label }) });
  return created.token;
}

/** Calls the broker's API directly, as an admin would, to check what jit did. */
export async function api<T = unknown>(
  broker: { url: string },
  token: string,
  method: string,
  route: string,
  body?: unknown,
): Promise<{ status: number; body: T }> {
  const response = await fetch(`${broker.url}/v1/${route}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, body: (text ? JSON.parse(text) : undefined) as T };
}

/** Reads a file through the files endpoint with a grant credential. */
export async function readGranted(url: string, credential: string, filePath: string): Promise<{ status: number; text: string }> {
  const response = await fetch(`${url}/v1/files/${filePath}`, { headers: { authorization: `Bearer ${credential}` } });
  return { status: response.status, text: await response.text() };
}
