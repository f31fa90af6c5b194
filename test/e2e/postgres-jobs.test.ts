// `jit run` around real database clients: psql and node's pg read the granted table with the
// PG* variables and nothing else, and no role survives its grant.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { roleNameFor } from '../../src/broker/providers/postgres/contracts.ts';
import { jit, testEnv } from '../helpers/cli.ts';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/postgres.ts';
import { assertReleased, onlyGrant } from '../helpers/state.ts';
import { setUp } from './support.ts';

const ADMIN_URL_ENV = 'JIT_E2E_WAREHOUSE_ADMIN_URL';
const skip = await postgresSkipReason();

const POLICY = `policy:
  rules:
    - name: warehouse-readers
      subjects: ["user:admin"]
      scopes: ["warehouse/public.*"]
      actions: [select]
      defaultTtl: 15m
      maxTtl: 1h
`;
const RESOURCE = ['  warehouse:', '    kind: postgres', `    urlEnv: ${ADMIN_URL_ENV}`, '    tables: ["public.*"]'].join('\n');

let database: TestDatabase | undefined;

before(async () => {
  if (skip) return;
  database = await createTestDatabase();
  const admin = new pg.Client({ connectionString: database.url });
  await admin.connect();
  await admin.query(`
    CREATE TABLE customers (id int PRIMARY KEY, email text);
    INSERT INTO customers VALUES (1, 'ada@example.com'), (2, 'bo@example.com');
    CREATE TABLE payroll (id int, salary int);
    INSERT INTO payroll VALUES (1, 100);
  `);
  await admin.end();
  process.env[ADMIN_URL_ENV] = database.url;
});
after(async () => {
  delete process.env[ADMIN_URL_ENV];
  await database?.drop();
});

/** Whether the grant's role still exists in the cluster. */
async function roleExists(grantId: string): Promise<boolean> {
  const admin = new pg.Client({ connectionString: database?.url });
  await admin.connect();
  try {
    return (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [roleNameFor(grantId)])).rowCount === 1;
  } finally {
    await admin.end();
  }
}

test("jit run --scope warehouse/public.customers:select -- psql -c 'select count(*) from customers'", { skip }, async (t) => {
  const places = await setUp(t, { policy: POLICY, resources: RESOURCE });
  if (!places) return;
  const result = await jit(
    ['run', '--scope', 'warehouse/public.customers:select', '--', 'psql', '-X', '-A', '-t', '-c', 'select count(*) from customers'],
    // libpq variables a parent might hold: none of them may steer the job's connection.
    { env: { ...places.env, PGHOSTADDR: '192.0.2.1', PGSERVICE: 'production', PGUSER: 'postgres', PGDATABASE: 'postgres' } },
  );
  assert.equal(result.stderr, '');
  assert.equal(result.code, 0);
  assert.equal(result.stdout.trim(), '2');
  const grant = await onlyGrant(places.broker);
  await assertReleased(places, grant.id);
  assert.equal(await roleExists(grant.id), false, 'no role survives its grant');
});

test('the same role cannot read any other table; psql says why and jit passes its exit status on', { skip }, async (t) => {
  const places = await setUp(t, { policy: POLICY, resources: RESOURCE });
  if (!places) return;
  const result = await jit(
    ['run', '--scope', 'warehouse/public.customers:select', '--', 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-c', 'select * from payroll'],
    { env: places.env },
  );
  assert.equal(result.code, 1, 'psql exits 1 on the refused query');
  assert.match(result.stderr, /permission denied for table payroll/);
  const grant = await onlyGrant(places.broker);
  assert.equal(await roleExists(grant.id), false);
});

test('node pg with DATABASE_URL alone works the same way', { skip }, async (t) => {
  const places = await setUp(t, { policy: POLICY, resources: RESOURCE });
  if (!places) return;
  const script = `
    const { Client } = await import(${JSON.stringify(import.meta.resolve('pg'))});
    const client = new Client({ connectionString: process.env.DATABASE_URL });
    await client.connect();
    const { rows } = await client.query('select email from customers order by id');
    console.log(rows.map((row) => row.email).join(','));
    await client.end();
  `;
  const result = await jit(
    ['run', '--scope', 'warehouse/public.customers:select', '--', process.execPath, '--input-type=module', '-e', script],
    {
      env: places.env,
    },
  );
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), 'ada@example.com,bo@example.com');
});

test('a broker whose postgres admin URL variable is not set refuses to start, naming the variable only', async (t) => {
  const dir = path.join(await mkdtemp(path.join(tmpdir(), 'jit-pg-config-')), 'broker');
  t.after(() => rm(path.dirname(dir), { recursive: true, force: true }));
  const env = await testEnv();
  t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
  assert.equal((await jit(['broker', 'init', '--dir', dir], { env })).code, 0);
  const file = path.join(dir, 'broker.yaml');
  await writeFile(file, (await readFile(file, 'utf8')).replace('resources:\n', `resources:\n${RESOURCE}\n`));
  const unset = { ...env, [ADMIN_URL_ENV]: undefined };
  for (const args of [
    ['broker', 'check-config', '--dir', dir],
    ['broker', 'start', '--dir', dir, '--port', '0'],
  ]) {
    const result = await jit(args, { env: unset });
    assert.equal(result.code, 2, args.join(' '));
    assert.equal(
      result.stderr,
      `jit: error: ${file}: resources.warehouse.urlEnv: ${ADMIN_URL_ENV} is not set; give the broker the admin URL (postgres://ADMIN@HOST:PORT/DATABASE) there before starting it\n`,
    );
  }
});
