import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { initBroker } from '../../src/broker/broker.ts';
import { jit, testEnv } from '../helpers/cli.ts';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

/** A broker directory whose broker.yaml ends with the given `store:` block. */
async function brokerWithStore(store: string): Promise<{ dir: string; file: string; env: NodeJS.ProcessEnv }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'jit-e2e-store-'));
  dirs.push(dir);
  const env = await testEnv();
  await initBroker(dir, 'admin');
  const file = path.join(dir, 'broker.yaml');
  await writeFile(file, `${await readFile(file, 'utf8')}\n${store}`);
  return { dir, file, env };
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('jit broker start: the store', () => {
  it('says in one line, exit 6, that a PostgreSQL store cannot be reached', async () => {
    const port = await closedPort();
    const { dir, env } = await brokerWithStore('store:\n  engine: postgres\n  urlEnv: JIT_BROKER_DATABASE_URL\n');
    const result = await jit(['broker', 'start', '--dir', dir, '--port', '0'], {
      env: { ...env, JIT_BROKER_DATABASE_URL: `postgres://jit:s3cret-pw@127.0.0.1:${port}/jit` },
    });
    assert.equal(result.code, 6, result.stderr);
    assert.match(
      result.stderr,
      new RegExp(
        `^jit: error: cannot reach the store, PostgreSQL at 127\\.0\\.0\\.1:${port}/jit \\(ECONNREFUSED\\); check that PostgreSQL is running`,
      ),
    );
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
    assert.doesNotMatch(result.stderr, /s3cret-pw/);
    assert.equal(result.stdout, '');
  });

  it('names the unset variable when urlEnv points at nothing (exit 2)', async () => {
    const { dir, env } = await brokerWithStore('store:\n  engine: postgres\n  urlEnv: JIT_BROKER_DATABASE_URL\n');
    const result = await jit(['broker', 'start', '--dir', dir, '--port', '0'], { env });
    assert.equal(result.code, 2, result.stderr);
    assert.match(
      result.stderr,
      /^jit: error: store\.urlEnv names JIT_BROKER_DATABASE_URL, which is not set; export JIT_BROKER_DATABASE_URL=/,
    );
  });

  it('refuses a password in broker.yaml with the line and key', async () => {
    const { dir, file, env } = await brokerWithStore('store:\n  engine: postgres\n  url: postgres://jit:pw@127.0.0.1/jit\n');
    const result = await jit(['broker', 'start', '--dir', dir, '--port', '0'], { env });
    assert.equal(result.code, 2, result.stderr);
    const line = (await readFile(file, 'utf8')).split('\n').findIndex((text) => text.includes('url: postgres://')) + 1;
    assert.match(
      result.stderr,
      new RegExp(`^jit: error: ${file.replaceAll('.', '\\.')}:${line}: store\\.url: a password does not belong in broker\\.yaml`),
    );
  });
});
