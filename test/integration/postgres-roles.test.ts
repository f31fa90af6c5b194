import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { ROLE_PREFIX, roleNameFor, type TablePrivilege } from '../../src/broker/providers/postgres/contracts.ts';
import { PgRoleManager, scramVerifier } from '../../src/broker/providers/postgres/roles.ts';
import { JitError } from '../../src/core/errors.ts';
import { createTestDatabase, postgresSkipReason, queryDatabase, type TestDatabase } from '../helpers/postgres.ts';

/**
 * PgRoleManager against the real PostgreSQL on this machine, checked by connecting as the role it
 * made, with the `pg` client and the real `psql`. This server trusts every connection from
 * 127.0.0.1 (pg_hba.conf), so the password and VALID UNTIL are not exercised by authentication
 * here; LOGIN/NOLOGIN, privileges and the connection limit are enforced all the same.
 */
const skip = await postgresSkipReason();

const SCHEMA = `
  CREATE TABLE public.customers (id int PRIMARY KEY, email text, ssn text);
  INSERT INTO public.customers VALUES (1, 'ada@example.com', '123-45-6789'), (2, 'bob@example.com', '987-65-4321');
  CREATE TABLE public.orders (id serial PRIMARY KEY, customer_id int, total numeric);
  INSERT INTO public.orders (customer_id, total) VALUES (1, 10);
  CREATE SCHEMA sales;
  CREATE TABLE sales.secret (id int, note text);
`;

const HOUR = 3_600_000;
const newGrantId = () => `g_${randomBytes(10).toString('hex')}`;
const password = () => randomBytes(18).toString('base64url');
const select = (table: string, columns?: string[], schema = 'public'): TablePrivilege => ({ schema, table, columns, privilege: 'select' });

type Session = pg.Client & { errors: Error[] };

describe('PgRoleManager: ephemeral PostgreSQL roles', { skip }, () => {
  let database: TestDatabase;
  let roles: PgRoleManager;
  const made: string[] = [];

  before(async () => {
    database = await createTestDatabase();
    await queryDatabase(database.url, SCHEMA);
    roles = await PgRoleManager.open(database.url, { offered: ['public.*'] });
  });

  after(async () => {
    for (const grantId of made) await roles.drop(grantId);
    await roles.close();
    await database.drop();
  });

  /** Creates a role for a new grant, remembered for cleanup. */
  async function grant(privileges: TablePrivilege[], login = true) {
    const grantId = newGrantId();
    const secret = password();
    made.push(grantId);
    await roles.create(grantId, secret, privileges, { login, validUntil: new Date(Date.now() + HOUR) });
    return { grantId, role: roleNameFor(grantId), password: secret };
  }

  async function connectAs(role: string, secret: string): Promise<Session> {
    const { host, port, database: name } = roles.target;
    const client = Object.assign(new pg.Client({ host, port, database: name, user: role, password: secret }), { errors: [] as Error[] });
    // A session the server terminates while idle reports it as an 'error' event.
    client.on('error', (error) => client.errors.push(error));
    await client.connect();
    return client;
  }

  async function psql(role: string, secret: string, sql: string): Promise<{ code: number; stdout: string; stderr: string }> {
    const { host, port, database: name } = roles.target;
    const args = ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', host, '-p', String(port), '-U', role, '-d', name, '-c', sql];
    return new Promise((resolve) => {
      // The password only in the environment, never in argv (visible in ps).
      execFile('psql', args, { env: { ...process.env, PGPASSWORD: secret } }, (error, stdout, stderr) => {
        resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr });
      });
    });
  }

  const roleRow = async (role: string) =>
    (await queryDatabase(database.url, 'SELECT * FROM pg_roles WHERE rolname = $1', [role]))[0] as Record<string, unknown> | undefined;

  const deniedWith = (pattern: RegExp) => (error: unknown) => error instanceof pg.DatabaseError && pattern.test(error.message);

  it('grants SELECT on exactly the scoped columns: nothing else, no CREATE, no memberships', async () => {
    const { role, password: secret } = await grant([select('customers', ['id', 'email'])]);
    const row = await roleRow(role);
    assert.ok(row);
    assert.equal(row.rolcanlogin, true);
    assert.equal(row.rolconnlimit, 5);
    assert.ok(row.rolvaliduntil instanceof Date && Math.abs(row.rolvaliduntil.getTime() - Date.now() - HOUR) < 60_000);
    for (const attribute of ['rolsuper', 'rolcreatedb', 'rolcreaterole', 'rolinherit', 'rolreplication', 'rolbypassrls']) {
      assert.equal(row[attribute], false, attribute);
    }
    const memberships = await queryDatabase(
      database.url,
      'SELECT 1 FROM pg_auth_members WHERE member = (SELECT oid FROM pg_roles WHERE rolname = $1)',
      [role],
    );
    assert.equal(memberships.length, 0);
    // The server stores (and was sent) a SCRAM verifier, not the password.
    const [stored] = await queryDatabase(database.url, 'SELECT rolpassword FROM pg_authid WHERE rolname = $1', [role]);
    assert.match(String(stored?.rolpassword), /^SCRAM-SHA-256\$4096:/);

    const session = await connectAs(role, secret);
    try {
      const { rows } = await session.query('SELECT id, email FROM customers ORDER BY id');
      assert.deepEqual(rows, [
        { id: 1, email: 'ada@example.com' },
        { id: 2, email: 'bob@example.com' },
      ]);
      const denied = deniedWith(/permission denied for table customers/);
      await assert.rejects(session.query('SELECT ssn FROM customers'), denied);
      await assert.rejects(session.query('SELECT * FROM customers'), denied);
      await assert.rejects(session.query('SELECT id FROM orders'), deniedWith(/permission denied for table orders/));
      await assert.rejects(session.query('SELECT * FROM sales.secret'), deniedWith(/permission denied for schema sales/));
      await assert.rejects(session.query('CREATE TABLE public.mine (x int)'), deniedWith(/permission denied for schema public/));
      await assert.rejects(session.query('CREATE SCHEMA mine'), deniedWith(/permission denied for database/));
      // PUBLIC holds TEMP on every database by default and jit leaves database-wide privileges alone:
      // a temporary table works, and lives only as long as the session drop() terminates.
      await session.query('CREATE TEMP TABLE scratch (x int)');
    } finally {
      await session.end();
    }

    const ok = await psql(role, secret, 'SELECT email FROM customers WHERE id = 1');
    assert.deepEqual([ok.code, ok.stdout.trim()], [0, 'ada@example.com'], ok.stderr);
    const refused = await psql(role, secret, 'SELECT ssn FROM customers');
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /permission denied for table customers/);
  });

  it('sends the same verifier PostgreSQL computes for the password', async () => {
    const probe = `jit_test_scram_${randomBytes(4).toString('hex')}`;
    await queryDatabase(database.url, `SET password_encryption = 'scram-sha-256'; CREATE ROLE ${probe} PASSWORD 'correct horse 1'`);
    try {
      const [row] = await queryDatabase(database.url, 'SELECT rolpassword FROM pg_authid WHERE rolname = $1', [probe]);
      const stored = String(row?.rolpassword);
      const [, iterations = '', salt = ''] = /^SCRAM-SHA-256\$(\d+):([^$]+)\$/.exec(stored) ?? [];
      assert.equal(await scramVerifier('correct horse 1', Buffer.from(salt, 'base64'), Number(iterations)), stored);
    } finally {
      await queryDatabase(database.url, `DROP ROLE ${probe}`);
    }
  });

  it('grants INSERT and UPDATE exactly: the serial sequence for inserts, the named columns for updates', async () => {
    const { role, password: secret } = await grant([
      { schema: 'public', table: 'orders', columns: undefined, privilege: 'insert' },
      { schema: 'public', table: 'customers', columns: ['email'], privilege: 'update' },
      select('customers', ['id']),
    ]);
    const session = await connectAs(role, secret);
    try {
      await session.query('INSERT INTO orders (customer_id, total) VALUES (2, 5)');
      await session.query("UPDATE customers SET email = 'ada@new.example' WHERE id = 1");
      await assert.rejects(
        session.query("UPDATE customers SET ssn = 'x' WHERE id = 1"),
        deniedWith(/permission denied for table customers/),
      );
      await assert.rejects(
        session.query('INSERT INTO orders (customer_id) VALUES (1) RETURNING id'),
        deniedWith(/permission denied for table orders/),
      );
      await assert.rejects(session.query('SELECT * FROM orders'), deniedWith(/permission denied/));
      await assert.rejects(session.query('DELETE FROM orders'), deniedWith(/permission denied/));
      await assert.rejects(session.query('INSERT INTO customers (id) VALUES (9)'), deniedWith(/permission denied/));
    } finally {
      await session.end();
    }
    const rows = await queryDatabase(
      database.url,
      'SELECT (SELECT email FROM customers WHERE id = 1) AS email, (SELECT count(*)::int FROM orders) AS orders',
    );
    assert.deepEqual(rows, [{ email: 'ada@new.example', orders: 2 }]);
    await queryDatabase(database.url, "UPDATE customers SET email = 'ada@example.com' WHERE id = 1");
  });

  it('refuses unknown and unoffered tables, unknown columns and delete with columns, before creating anything', async () => {
    const cases: [TablePrivilege, string, RegExp][] = [
      [
        select('nope'),
        'unknown_table',
        /^table public\.nope does not exist in PostgreSQL at 127\.0\.0\.1:5432\/jit_test_\w+ \(offered: public\.\*\)$/,
      ],
      [
        select('secret', undefined, 'sales'),
        'table_not_offered',
        /^table sales\.secret is not offered by this resource \(offered: public\.\*\)$/,
      ],
      [
        select('customers', ['id', 'phone']),
        'unknown_column',
        /^table public\.customers has no column "phone" \(columns: id, email, ssn\)$/,
      ],
      [
        { schema: 'public', table: 'orders', columns: ['id'], privilege: 'delete' },
        'invalid_scope',
        /delete on public\.orders cannot name columns/,
      ],
    ];
    for (const [privilege, code, message] of cases) {
      const refusal = (error: unknown) => error instanceof JitError && error.code === code && message.test(error.message);
      await assert.rejects(roles.check([select('customers'), privilege]), refusal);
      const grantId = newGrantId();
      await assert.rejects(
        roles.create(grantId, password(), [select('customers'), privilege], { login: true, validUntil: new Date(Date.now() + HOUR) }),
        refusal,
      );
      assert.equal(await roleRow(roleNameFor(grantId)), undefined);
    }
    await roles.check([select('customers', ['ssn']), { schema: 'public', table: 'orders', columns: undefined, privilege: 'delete' }]);
  });

  it('leaves no role behind when a GRANT fails midway', async () => {
    // A least-privileged admin that owns customers but holds nothing on orders: the GRANT on
    // customers succeeds, the one on orders fails, and the transaction takes the role with it.
    const admin = `jit_test_admin_${randomBytes(4).toString('hex')}`;
    await queryDatabase(database.url, `CREATE ROLE ${admin} LOGIN CREATEROLE; ALTER TABLE public.customers OWNER TO ${admin}`);
    const url = new URL(database.url);
    url.username = admin;
    const limited = await PgRoleManager.open(url.toString(), { offered: ['public.*'] });
    try {
      const grantId = newGrantId();
      await assert.rejects(
        limited.create(grantId, password(), [select('orders'), select('customers')], {
          login: true,
          validUntil: new Date(Date.now() + HOUR),
        }),
        (error) => {
          assert.ok(error instanceof JitError);
          assert.equal(error.code, 'database_error');
          assert.match(error.message, /permission denied for table orders/);
          return true;
        },
      );
      assert.equal(await roleRow(roleNameFor(grantId)), undefined);
    } finally {
      await limited.close();
      await queryDatabase(database.url, `ALTER TABLE public.customers OWNER TO postgres; DROP ROLE ${admin}`);
    }

    // PUBLIC able to create in a schema (PostgreSQL's pre-15 default on public) is refused, not fixed.
    await queryDatabase(database.url, 'GRANT CREATE ON SCHEMA sales TO PUBLIC');
    try {
      const grantId = newGrantId();
      await assert.rejects(
        roles.create(grantId, password(), [select('customers')], { login: true, validUntil: new Date(Date.now() + HOUR) }),
        (error) => error instanceof JitError && error.code === 'role_could_create' && /schema sales/.test(error.message),
      );
      assert.equal(await roleRow(roleNameFor(grantId)), undefined);
    } finally {
      await queryDatabase(database.url, 'REVOKE CREATE ON SCHEMA sales FROM PUBLIC');
    }
  });

  it('drop() cuts off a running query and an idle session, drops the role, and is a no-op the second time', async () => {
    const { grantId, role, password: secret } = await grant([select('customers')]);
    const idle = await connectAs(role, secret);
    const busy = await connectAs(role, secret);
    const sleeping = busy.query('SELECT pg_sleep(30)');
    sleeping.catch(() => {}); // observed below; not an unhandled rejection meanwhile
    for (let tries = 0; ; tries += 1) {
      const active = await queryDatabase(
        database.url,
        "SELECT 1 FROM pg_stat_activity WHERE usename = $1 AND query LIKE '%pg_sleep%' AND state = 'active'",
        [role],
      );
      if (active.length > 0) break;
      assert.ok(tries < 100, 'the query never started');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }

    const started = Date.now();
    const actions = await roles.drop(grantId);
    assert.deepEqual(actions, [`login disabled for role ${role}`, '2 sessions terminated', 'privileges revoked', `role ${role} dropped`]);
    await assert.rejects(
      sleeping,
      (error) => error instanceof Error && /terminating connection due to administrator command/.test(error.message),
    );
    assert.ok(Date.now() - started < 10_000, 'the query was cut off, not waited for');
    await assert.rejects(idle.query('SELECT 1'));
    assert.equal(await roleRow(role), undefined);
    assert.deepEqual(await queryDatabase(database.url, 'SELECT 1 FROM pg_stat_activity WHERE usename = $1', [role]), []);

    assert.deepEqual(await roles.drop(grantId), [`role ${role} already gone`]);
    await Promise.all([idle.end().catch(() => {}), busy.end().catch(() => {})]);
  });

  it('setValidity() turns login on and off and moves VALID UNTIL while an open session keeps working', async () => {
    const { grantId, role, password: secret } = await grant([select('customers', ['id'])], false);
    await assert.rejects(connectAs(role, secret), /is not permitted to log in/);

    const later = new Date(Date.now() + 5 * HOUR);
    await roles.setValidity(grantId, { login: true, validUntil: later });
    const session = await connectAs(role, secret);
    try {
      const renewed = new Date(Date.now() + 9 * HOUR);
      await roles.setValidity(grantId, { login: true, validUntil: renewed });
      assert.deepEqual((await roleRow(role))?.rolvaliduntil, renewed);
      await roles.setValidity(grantId, { login: false, validUntil: renewed });
      assert.equal((await roleRow(role))?.rolcanlogin, false);
      await assert.rejects(connectAs(role, secret), /is not permitted to log in/);
      assert.deepEqual((await session.query('SELECT count(*)::int AS n FROM customers')).rows, [{ n: 2 }]);
    } finally {
      await session.end();
    }
    await assert.rejects(
      roles.setValidity(newGrantId(), { login: true, validUntil: later }),
      (error) => error instanceof JitError && error.code === 'role_not_found',
    );
  });

  it('listRoles() sees grant roles only: LIKE treats the prefix underscores literally', async () => {
    const { role } = await grant([select('customers')]);
    const decoy = `jitxgx${randomBytes(10).toString('hex')}`; // matches jit_g_% if "_" were a wildcard
    await queryDatabase(database.url, `CREATE ROLE ${decoy}`);
    try {
      const listed = await roles.listRoles();
      assert.ok(listed.includes(role));
      assert.ok(!listed.includes(decoy));
      assert.ok(listed.every((name) => name.startsWith(ROLE_PREFIX)));
    } finally {
      await queryDatabase(database.url, `DROP ROLE ${decoy}`);
    }
  });

  it('an unreachable database is database_unreachable, described without the password', async () => {
    const closed = await PgRoleManager.open('postgres://admin:hunter2-secret@127.0.0.1:1/warehouse', {
      offered: ['public.*'],
      jobHost: 'db.internal',
      jobPort: 6432,
    });
    try {
      assert.deepEqual(closed.target, { host: 'db.internal', port: 6432, database: 'warehouse' });
      for (const call of [() => closed.listRoles(), () => closed.drop(newGrantId()), () => closed.check([select('customers')])]) {
        await assert.rejects(call(), (error) => {
          assert.ok(error instanceof JitError);
          assert.equal(error.code, 'database_unreachable');
          assert.match(error.message, /^cannot reach PostgreSQL at 127\.0\.0\.1:1\/warehouse to .+ \(ECONNREFUSED\)$/);
          assert.doesNotMatch(JSON.stringify({ ...error, message: error.message, hint: error.hint }), /hunter2/);
          return true;
        });
      }
    } finally {
      await closed.close();
    }
  });
});
