import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { JitProcess, jit, testEnv } from '../helpers/cli.ts';

const scratch: string[] = [];
after(() => Promise.all(scratch.map((dir) => rm(dir, { recursive: true, force: true }))));

async function newDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'jit-e2e-broker-'));
  scratch.push(dir);
  return path.join(dir, 'broker');
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

describe('jit broker init', () => {
  it('writes a documented broker.yaml (0600), the data root, and prints the admin token once', async () => {
    const dir = await newDir();
    const env = await testEnv();
    const result = await jit(['broker', 'init', '--dir', dir, '--json'], { env });
    assert.equal(result.code, 0, result.stderr);
    const { token, config, subject } = JSON.parse(result.stdout) as { token: string; config: string; subject: string };
    assert.match(token, /^jit_[A-Za-z0-9_-]{43}$/);
    assert.equal(subject, 'user:admin');
    assert.equal(config, path.join(dir, 'broker.yaml'));
    const yaml = await readFile(config, 'utf8');
    assert.match(yaml, /^# jit broker configuration\. Reference: docs\/broker-config\.md/);
    assert.match(yaml, /scopes: \["datasets\/\*\*"\]/);
    assert.match(yaml, /maxTtl: 8h/);
    assert.ok(!yaml.includes(token), 'the token is not in the config');
    assert.equal((await stat(config)).mode & 0o777, 0o600);
    assert.ok((await stat(path.join(dir, 'data', 'datasets'))).isDirectory());
    assert.ok(!(await readFile(path.join(dir, 'broker.db'))).includes(token), 'the token is stored hashed');
  });

  it('refuses to initialise the same directory twice and keeps the first token valid', async () => {
    const dir = await newDir();
    const env = await testEnv();
    assert.equal((await jit(['broker', 'init', '--dir', dir], { env })).code, 0);
    const before = await readFile(path.join(dir, 'broker.yaml'), 'utf8');
    const again = await jit(['broker', 'init', '--dir', dir], { env });
    assert.equal(again.code, 8);
    assert.equal(again.stdout, '');
    assert.match(again.stderr, /^jit: error: .*broker\.yaml already exists; start it with/);
    assert.equal(again.stderr.trim().split('\n').length, 1);
    assert.equal(await readFile(path.join(dir, 'broker.yaml'), 'utf8'), before);
  });
});

describe('jit broker start', () => {
  it('prints the URL it listens on, serves /v1, and shuts down cleanly on SIGTERM and SIGINT', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const dir = await newDir();
      const env = await testEnv();
      const { token } = JSON.parse((await jit(['broker', 'init', '--dir', dir, '--json'], { env })).stdout) as { token: string };
      const broker = new JitProcess(['broker', 'start', '--dir', dir, '--port', '0'], { env });
      const [, url] = await broker.readUntil('stdout', /jit broker listening on (http:\/\/127\.0\.0\.1:\d+)\n/);
      const whoami = await fetch(`${url}/v1/whoami`, { headers: { authorization: `Bearer ${token}` } });
      const me = (await whoami.json()) as { subject: string; roles: string[]; tokenId: string };
      assert.deepEqual(me, { subject: 'user:admin', roles: ['admin'], tokenId: me.tokenId }, 'init mints an admin token');
      broker.kill(signal);
      const finished = await broker.done;
      assert.equal(finished.code, 0, `exit after ${signal}: ${finished.stderr}`);
      await assert.rejects(fetch(`${url}/v1/health`), 'nothing listens after shutdown');
    }
  });

  it('refuses a broken broker.yaml with file, line and key, and never starts listening', async () => {
    const dir = await newDir();
    const env = await testEnv();
    await jit(['broker', 'init', '--dir', dir], { env });
    const file = path.join(dir, 'broker.yaml');
    await writeFile(file, (await readFile(file, 'utf8')).replace('maxTtl: 8h', 'maxTtl: forever'));
    const port = await freePort();
    const result = await jit(['broker', 'start', '--dir', dir, '--port', String(port)], { env });
    assert.equal(result.code, 2);
    assert.match(
      result.stderr,
      new RegExp(`^jit: error: ${file.replaceAll('.', '\\.')}:\\d+: policy\\.rules\\.0\\.maxTtl: invalid duration "forever"`),
    );
    await assert.rejects(fetch(`http://127.0.0.1:${port}/v1/health`));
  });

  it('says so in one line when the port is taken', async () => {
    const dir = await newDir();
    const env = await testEnv();
    await jit(['broker', 'init', '--dir', dir], { env });
    const holder = net.createServer().listen(0, '127.0.0.1');
    await new Promise((resolve) => holder.once('listening', resolve));
    try {
      const { port } = holder.address() as net.AddressInfo;
      const result = await jit(['broker', 'start', '--dir', dir, '--port', String(port)], { env });
      assert.equal(result.code, 2);
      assert.match(
        result.stderr,
        new RegExp(`^jit: error: cannot listen on 127\\.0\\.0\\.1:${port} \\(EADDRINUSE\\); another process holds that port`),
      );
    } finally {
      holder.close();
    }
  });

  it('says what to do when the directory has no broker', async () => {
    const result = await jit(['broker', 'start', '--dir', await newDir(), '--port', '0'], { env: await testEnv() });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /cannot read broker config .*broker\.yaml.*; create one with `jit broker init --dir DIR`/);
  });
});
