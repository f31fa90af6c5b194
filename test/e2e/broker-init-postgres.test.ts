import assert from 'node:assert/strict';
import { access, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { JitProcess, jit, testEnv } from '../helpers/cli.ts';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/postgres.ts';

describe('jit broker init --postgres-url-env', () => {
  let database: TestDatabase | undefined;
  let scratch: string;
  before(async () => {
    scratch = await mkdtemp(path.join(tmpdir(), 'jit-init-pg-'));
    if (!(await postgresSkipReason())) database = await createTestDatabase();
  });
  after(async () => {
    await database?.drop();
    await rm(scratch, { recursive: true, force: true });
  });

  it('creates a broker whose store, first admin included, is PostgreSQL', async (t) => {
    if (!database) return t.skip(await postgresSkipReason());
    const dir = path.join(scratch, 'broker');
    const env = await testEnv({ JIT_BROKER_DATABASE_URL: database.url });
    const init = await jit(['broker', 'init', '--dir', dir, '--postgres-url-env', 'JIT_BROKER_DATABASE_URL', '--json'], { env });
    assert.equal(init.code, 0, init.stderr);
    const { token } = JSON.parse(init.stdout) as { token: string };
    assert.match(
      await readFile(path.join(dir, 'broker.yaml'), 'utf8'),
      /store:\n {2}engine: postgres\n {2}urlEnv: JIT_BROKER_DATABASE_URL\n/,
    );
    await assert.rejects(access(path.join(dir, 'broker.db')), 'no SQLite file');

    const broker = new JitProcess(['broker', 'start', '--dir', dir, '--port', '0'], { env });
    try {
      const [, url] = await broker.readUntil('stdout', /listening on (\S+)\n/);
      const whoami = await fetch(`${url}/v1/whoami`, { headers: { authorization: `Bearer ${token}` } });
      const me = (await whoami.json()) as { subject: string; roles: string[]; tokenId: string };
      assert.deepEqual(me, { subject: 'user:admin', roles: ['admin'], tokenId: me.tokenId }, 'init mints an admin token');
    } finally {
      broker.kill('SIGTERM');
      await broker.done;
    }
  });

  it('refuses a name that is not an environment variable, and writes nothing', async () => {
    const dir = path.join(scratch, 'bad');
    const result = await jit(['broker', 'init', '--dir', dir, '--postgres-url-env', 'postgres://x'], { env: await testEnv() });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /^jit: error: invalid --postgres-url-env "postgres:\/\/x"; name an environment variable/);
    await assert.rejects(access(dir));
  });

  it('with the variable unset: one line, exit 2, and no broker.yaml', async () => {
    const dir = path.join(scratch, 'unset');
    const result = await jit(['broker', 'init', '--dir', dir, '--postgres-url-env', 'JIT_NOT_SET_ANYWHERE'], { env: await testEnv() });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /JIT_NOT_SET_ANYWHERE/);
    assert.equal(result.stderr.trim().split('\n').length, 1);
    await assert.rejects(access(path.join(dir, 'broker.yaml')));
  });
});
