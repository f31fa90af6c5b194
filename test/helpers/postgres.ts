import { randomBytes } from 'node:crypto';
import pg from 'pg';

/**
 * Throw-away PostgreSQL databases for tests, on the server at JIT_TEST_POSTGRES_URL (default:
 * 127.0.0.1:5432 as postgres, trust auth). Each test gets its own database and drops it after.
 */
export const ADMIN_URL = process.env.JIT_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export type TestDatabase = { name: string; url: string; drop(): Promise<void> };

async function withAdmin<T>(action: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: ADMIN_URL, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return await action(client);
  } finally {
    await client.end();
  }
}

/**
 * Why PostgreSQL tests cannot run here, or undefined when they can. Under CI=true an unreachable
 * server is an error instead (CI starts one: .ci/run), so PostgreSQL tests never silently skip there.
 */
export async function postgresSkipReason(): Promise<string | undefined> {
  try {
    await withAdmin((client) => client.query('SELECT 1'));
    return undefined;
  } catch (error) {
    const reason = `no PostgreSQL at ${ADMIN_URL} (${(error as Error).message}); start one, as .ci/run does`;
    if (process.env.CI === 'true') throw new Error(reason);
    return reason;
  }
}

/** Creates an empty database jit_test_<random>; `drop()` removes it even with clients still connected. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `jit_test_${randomBytes(6).toString('hex')}`;
  await withAdmin((client) => client.query(`CREATE DATABASE ${name}`));
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    name,
    url: url.toString(),
    drop: () => withAdmin((client) => client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)).then(() => undefined),
  };
}

/** Runs one query on a test database, outside any store: for checks the store interface does not offer. */
export async function queryDatabase(url: string, sql: string, params: unknown[] = []): Promise<Record<string, unknown>[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(sql, params)).rows as Record<string, unknown>[];
  } finally {
    await client.end();
  }
}
