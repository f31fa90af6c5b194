// The postgres provider in the grant lifecycle, on the PostgreSQL running on this machine: a
// grant's role reads exactly its tables, dies with the grant (sessions included), survives a
// database outage at revocation as a retried cleanup, and orphans are reconciled away.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { grantIdFromRole, roleNameFor } from '../../src/broker/providers/postgres/contracts.ts';
import type { AuditRecord } from '../../src/core/audit.ts';
import type { GrantView, IssuedGrant, RevocationReceipt } from '../../src/core/grant.ts';
import { newTimeOrderedId } from '../../src/core/ids.ts';
import { api, createToken, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/postgres.ts';
import { waitFor } from '../helpers/state.ts';

const ADMIN_URL_ENV = 'JIT_TEST_WAREHOUSE_ADMIN_URL';

const POLICY = `policy:
  rules:
    - name: admin-warehouse
      subjects: ["user:admin"]
      scopes: ["warehouse/**"]
      actions: [select, insert, update, delete]
      defaultTtl: 1h
      maxTtl: 8h
    - name: ana-orders-approved
      subjects: ["user:ana"]
      scopes: ["warehouse/public.orders"]
      actions: [select]
      defaultTtl: 1h
      maxTtl: 2h
      approval: { required: true, approvers: ["user:pat"], count: 1 }
`;

/**
 * A TCP proxy in front of PostgreSQL: the broker's admin connection goes through it, so the test
 * can take the database away from the broker (an outage) and give it back, without touching the
 * server other work shares.
 */
class OutageProxy {
  readonly #sockets = new Set<net.Socket>();
  #server: net.Server | undefined;
  port = 0;

  async start(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(5432, '127.0.0.1');
      for (const socket of [client, upstream]) {
        this.#sockets.add(socket);
        socket.once('close', () => this.#sockets.delete(socket));
        socket.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve));
    this.port = (server.address() as net.AddressInfo).port;
    this.#server = server;
  }

  async stop(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
    this.#server = undefined;
  }
}

const skip = await postgresSkipReason();

describe('postgres provider: roles live and die with grants', { skip }, () => {
  let database: TestDatabase;
  let broker: TestBroker;
  let admin: pg.Client;
  const proxy = new OutageProxy();
  const opened: pg.Client[] = [];

  const grant = async (scopes: string[]) => {
    const response = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes, heartbeat: false });
    assert.equal(response.status, 201, JSON.stringify(response.body));
    return response.body;
  };
  /** A session as the grant's role, from the job's own environment. */
  const connectAs = async (issued: IssuedGrant, applicationName?: string) => {
    const client = new pg.Client({ connectionString: issued.env.DATABASE_URL, application_name: applicationName });
    client.on('error', () => {});
    await client.connect();
    opened.push(client);
    return client;
  };
  const roleExists = async (grantId: string) =>
    (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [roleNameFor(grantId)])).rowCount === 1;

  before(async () => {
    database = await createTestDatabase();
    admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    await admin.query(`
      CREATE TABLE public.customers (id int PRIMARY KEY, email text, ssn text);
      INSERT INTO public.customers VALUES (1, 'ada@example.com', '111'), (2, 'bo@example.com', '222'), (3, 'cy@example.com', '333');
      CREATE TABLE public.orders (id int PRIMARY KEY, customer int);
      INSERT INTO public.orders VALUES (10, 1);
    `);
    await proxy.start();
    const adminUrl = new URL(database.url);
    adminUrl.port = String(proxy.port);
    process.env[ADMIN_URL_ENV] = adminUrl.toString();
    broker = await startTestBroker({
      policy: POLICY,
      resources: [
        '  warehouse:',
        '    kind: postgres',
        `    urlEnv: ${ADMIN_URL_ENV}`,
        '    tables: ["public.*"]',
        '    host: 127.0.0.1',
        '    port: 5432',
      ].join('\n'),
    });
  });
  after(async () => {
    for (const client of opened) await client.end().catch(() => {});
    await broker?.cleanup();
    await admin?.end();
    await proxy.stop();
    await database?.drop();
    delete process.env[ADMIN_URL_ENV];
  });

  it('gives the job PG* variables and a role that reads exactly the granted columns and table', async () => {
    const issued = await grant(['warehouse/public.customers(id,email):select']);
    assert.deepEqual(
      Object.keys(issued.env)
        .filter((name) => name.startsWith('PG') || name === 'DATABASE_URL')
        .sort(),
      ['DATABASE_URL', 'PGDATABASE', 'PGHOST', 'PGPASSWORD', 'PGPORT', 'PGUSER'],
    );
    assert.equal(issued.env.PGUSER, roleNameFor(issued.id));
    assert.equal(issued.env.AWS_ACCESS_KEY_ID, undefined, 'no S3 keys for a grant without files scopes');
    const session = await connectAs(issued);
    assert.equal((await session.query('SELECT count(*)::int AS n FROM public.customers')).rows[0].n, 3);
    assert.deepEqual((await session.query('SELECT id, email FROM public.customers ORDER BY id LIMIT 1')).rows, [
      { id: 1, email: 'ada@example.com' },
    ]);
    await assert.rejects(session.query('SELECT ssn FROM public.customers'), /permission denied/);
    await assert.rejects(session.query('SELECT * FROM public.orders'), /permission denied/);
    await assert.rejects(session.query('CREATE TABLE public.mine (x int)'), /permission denied/);
    const events = await broker.broker.grants.events(issued.id);
    assert.ok(!JSON.stringify(events).includes(issued.env.PGPASSWORD ?? '<none>'), 'the password is not in the audit trail');
  });

  it('refuses a table or column that does not exist before creating anything', async () => {
    for (const [scope, code] of [
      ['warehouse/public.nope:select', 'unknown_table'],
      ['warehouse/public.customers(nope):select', 'unknown_column'],
    ] as const) {
      const response = await api<{ code: string }>(broker, broker.token, 'POST', 'grants', { scopes: [scope] });
      assert.equal(response.status, 400, scope);
      assert.equal(response.body.code, code);
    }
    // Roles are cluster-wide and other tests make theirs: look only at roles granted anything here.
    const grantees = await admin.query(
      `SELECT DISTINCT grantee FROM information_schema.role_table_grants WHERE table_catalog = current_database() AND grantee LIKE 'jit\\_g\\_%'`,
    );
    const live = await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants');
    const liveIds = new Set(live.body.grants.filter((g) => g.state === 'active').map((g) => g.id));
    for (const { grantee } of grantees.rows) assert.ok(liveIds.has(grantIdFromRole(grantee) ?? ''), `${grantee} belongs to a live grant`);
  });

  it('revocation terminates the open session and drops the role', async () => {
    const issued = await grant(['warehouse/public.customers:select']);
    const session = await connectAs(issued);
    // Settled either way from the start: its rejection is the point, not an unhandled error.
    const running = session.query('SELECT pg_sleep(30)').then(
      () => 'finished',
      (error: Error) => error.message,
    );
    const receipt = await api<RevocationReceipt>(broker, broker.token, 'DELETE', `grants/${issued.id}`);
    assert.equal(receipt.body.state, 'revoked');
    assert.equal(receipt.body.deprovision, undefined);
    assert.ok(
      receipt.body.actions.some((action) => /terminated|dropped/.test(action)),
      receipt.body.actions.join('; '),
    );
    assert.match(await running, /terminating connection|Connection terminated/, 'the query running at revocation is cut off');
    assert.equal(await roleExists(issued.id), false);
  });

  it('renewal moves the role validity and keeps the open session', async () => {
    const issued = await grant(['warehouse/public.customers:select']);
    const session = await connectAs(issued);
    const before = (await admin.query('SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1', [roleNameFor(issued.id)])).rows[0]
      .rolvaliduntil;
    const renewed = await api<GrantView>(broker, broker.token, 'POST', `grants/${issued.id}/renew`, { ttlSeconds: 7200 });
    assert.equal(renewed.status, 200);
    const after = (await admin.query('SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1', [roleNameFor(issued.id)])).rows[0]
      .rolvaliduntil;
    assert.ok(new Date(after).getTime() > new Date(before).getTime() + 3_000_000, `${before} -> ${after}`);
    assert.equal(new Date(after).toISOString(), renewed.body.expiresAt);
    assert.equal((await session.query('SELECT 1 AS one')).rows[0].one, 1);
  });

  it('expiry ends the role and its session; a renewal before it keeps the session past the first expiry', async () => {
    const short = (
      await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', {
        scopes: ['warehouse/public.customers:select'],
        ttlSeconds: 1,
        heartbeat: false,
      })
    ).body;
    const renewedOne = (
      await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', {
        scopes: ['warehouse/public.customers:select'],
        ttlSeconds: 1,
        heartbeat: false,
      })
    ).body;
    const ending = await connectAs(short);
    const kept = await connectAs(renewedOne);
    const ended = new Promise((resolve) => ending.once('error', resolve));
    assert.equal((await api(broker, broker.token, 'POST', `grants/${renewedOne.id}/renew`, { ttlSeconds: 3600 })).status, 200);
    await new Promise((resolve) => setTimeout(resolve, 1300));
    await broker.broker.grants.sweep();
    assert.equal(await roleExists(short.id), false, 'the expired grant took its role with it');
    await ended;
    assert.equal(await roleExists(renewedOne.id), true);
    assert.equal(
      (await kept.query('SELECT count(*)::int AS n FROM public.customers')).rows[0].n,
      3,
      'past the first expiry, still working',
    );
  });

  it('records each session under a grant once (no statement, no password), and the sessions its end terminated', async () => {
    const issued = await grant(['warehouse/public.customers:select']);
    const sessions = async () =>
      (await api<{ records: AuditRecord[] }>(broker, broker.token, 'GET', `audit?grant=${issued.id}&action=data.session`)).body.records;
    // psql as a job runs it, from the grant's environment alone, for long enough to be seen.
    const psqlEnv = Object.fromEntries(Object.entries(issued.env).filter(([name]) => name.startsWith('PG')));
    const psql = spawn('psql', ['-X', '-Atc', 'SELECT pg_sleep(2), count(*) FROM public.customers'], {
      env: { PATH: process.env.PATH, ...psqlEnv, PGAPPNAME: 'nightly-report' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let psqlOutput = '';
    for (const stream of [psql.stdout, psql.stderr]) stream.on('data', (chunk: Buffer) => (psqlOutput += chunk.toString()));
    const psqlExit = new Promise<number | null>((resolve) => psql.once('close', resolve));
    const byPsql = await waitFor('the psql session on the trail', async () => (await sessions())[0], 10_000);
    assert.equal(await psqlExit, 0, psqlOutput);
    assert.match(psqlOutput, /\|3$/m, 'psql read the table');
    assert.equal(byPsql.outcome, 'ok');
    assert.equal(byPsql.actor, 'user:admin');
    assert.equal(byPsql.scope, 'warehouse/public.customers:select');
    assert.equal(byPsql.details.role, roleNameFor(issued.id));
    assert.equal(byPsql.details.database, database.name);
    assert.equal(byPsql.details.address, '127.0.0.1');
    assert.equal(byPsql.details.applicationName, 'nightly-report');
    assert.equal(typeof byPsql.details.pid, 'number');
    const started = Date.parse(String(byPsql.details.backendStart));
    assert.ok(Math.abs(started - Date.now()) < 60_000, `backend start ${byPsql.details.backendStart}`);

    // A session opened just before the revocation: recorded before the drop terminates it.
    const late = await connectAs(issued, 'etl-step-2');
    const cut = new Promise((resolve) => late.once('error', resolve));
    assert.equal((await api(broker, broker.token, 'DELETE', `grants/${issued.id}`)).status, 200);
    await cut;
    // Looks go on every second: give them time to (wrongly) record a backend twice.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    const recorded = await sessions();
    assert.deepEqual(
      recorded.map((record) => record.details.applicationName),
      ['nightly-report', 'etl-step-2'],
      'each backend once',
    );
    assert.notEqual(recorded[1]?.details.pid, byPsql.details.pid);
    const deprovisioned = (
      await api<{ records: AuditRecord[] }>(broker, broker.token, 'GET', `audit?grant=${issued.id}&action=grant.deprovisioned`)
    ).body.records[0];
    assert.ok(deprovisioned, 'the drop is on the trail');
    assert.ok((deprovisioned.details.actions as string[]).includes('1 session terminated'), JSON.stringify(deprovisioned.details));
    const trail = JSON.stringify(recorded);
    assert.ok(!trail.includes(issued.env.PGPASSWORD ?? '<none>'), 'no password');
    assert.ok(!trail.includes('pg_sleep'), 'no statement text');
  });

  it('a database outage at revocation leaves the drop pending, retried until the role is gone', async () => {
    const issued = await grant(['warehouse/public.customers:select']);
    await proxy.stop();
    const receipt = await api<RevocationReceipt>(broker, broker.token, 'DELETE', `grants/${issued.id}`);
    assert.equal(receipt.body.state, 'revoked', 'the grant is revoked at once');
    assert.equal(receipt.body.deprovision, 'pending');
    assert.equal((await api<GrantView>(broker, broker.token, 'GET', `grants/${issued.id}`)).body.deprovision, 'pending');
    assert.equal(await roleExists(issued.id), true, 'the database could not be told yet');
    await proxy.start();
    await waitFor(
      'the role dropped after the database came back',
      async () => {
        await broker.broker.grants.sweep();
        return (await roleExists(issued.id)) ? undefined : true;
      },
      20_000,
    );
    assert.equal((await api<GrantView>(broker, broker.token, 'GET', `grants/${issued.id}`)).body.deprovision, undefined);
    const events = (await broker.broker.grants.events(issued.id)).map((event) => event.type);
    assert.ok(events.includes('grant.deprovision_failed') && events.includes('grant.deprovisioned'), events.join(', '));
  });

  it('a table grant that waits for approval has a role that cannot log in until approved', async () => {
    const ana = await createToken(broker, 'user:ana', ['requester']);
    const pat = await createToken(broker, 'user:pat', ['approver']);
    const requested = await api<IssuedGrant>(broker, ana, 'POST', 'grants', {
      scopes: ['warehouse/public.orders:select'],
      heartbeat: false,
    });
    assert.equal(requested.status, 202);
    const role = roleNameFor(requested.body.id);
    const canLogin = async () => (await admin.query('SELECT rolcanlogin, rolvaliduntil FROM pg_roles WHERE rolname = $1', [role])).rows[0];
    assert.equal((await canLogin()).rolcanlogin, false, 'NOLOGIN while pending');
    const approved = await api<GrantView>(broker, pat, 'POST', `grants/${requested.body.id}/approve`, {});
    assert.equal(approved.body.state, 'active');
    const after = await canLogin();
    assert.equal(after.rolcanlogin, true, 'LOGIN once approved');
    assert.equal(new Date(after.rolvaliduntil).toISOString(), approved.body.expiresAt, 'valid until the expiry approval set');
    const session = await connectAs(requested.body);
    assert.equal((await session.query('SELECT count(*)::int AS n FROM public.orders')).rows[0].n, 1);
    await api(broker, ana, 'DELETE', `grants/${requested.body.id}`);
    assert.equal(await roleExists(requested.body.id), false);
  });

  it('the reconciler drops a role of this database whose grant does not exist, and no other', async (t) => {
    const orphan = roleNameFor(newTimeOrderedId('g', Date.now() - 3_600_000));
    // As a crash would leave it: made by this resource (CONNECT on its database), its grant never recorded.
    await admin.query(`CREATE ROLE ${admin.escapeIdentifier(orphan)} LOGIN`);
    await admin.query(`GRANT CONNECT ON DATABASE ${admin.escapeIdentifier(database.name)} TO ${admin.escapeIdentifier(orphan)}`);
    const stranger = roleNameFor(newTimeOrderedId('g', Date.now() - 3_600_000));
    await admin.query(`CREATE ROLE ${admin.escapeIdentifier(stranger)} LOGIN`);
    t.after(() => admin.query(`DROP ROLE IF EXISTS ${admin.escapeIdentifier(stranger)}`));
    await broker.broker.grants.reconcileNow();
    assert.equal((await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [orphan])).rowCount, 0);
    assert.equal(
      (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [stranger])).rowCount,
      1,
      "a role with no grant on this resource's database is another broker's: left alone",
    );
  });
});
