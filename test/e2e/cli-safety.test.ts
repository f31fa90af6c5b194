// Safety properties around the local side: tokens go only to the broker they belong to, parallel
// jits share the keychain without tripping over each other, the reaper only judges wrappers it
// can see, and the CLI refuses malformed names before doing anything.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os, { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { LocalGrant } from '../../src/config/local.ts';
import type { GrantView, IssuedGrant } from '../../src/core/grant.ts';
import { api, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { JitProcess, jit, testEnv } from '../helpers/cli.ts';
import { realKeychain } from '../helpers/keychain.ts';
import { indexFile, localGrants } from '../helpers/state.ts';

/** An HTTP server that records every Authorization header it is sent and answers 503. */
async function listeningTrap(): Promise<{ url: string; headers: string[]; close(): Promise<void> }> {
  const headers: string[] = [];
  const server = http.createServer((request, response) => {
    headers.push(request.headers.authorization ?? '');
    response.writeHead(503, { 'content-type': 'application/json' }).end('{"error":{"code":"trap","message":"trap"}}');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}`, headers, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

describe('tokens go only to the broker they belong to', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker();
  });
  after(() => broker.cleanup());

  it("never sends a profile's keychain token to a JIT_BROKER_URL that is not the profile's broker", async (t) => {
    if (!(await realKeychain(t))) return;
    const trap = await listeningTrap();
    t.after(() => trap.close());
    const profile = `test-${randomBytes(4).toString('hex')}`;
    const env = await testEnv({ JIT_PROFILE: profile });
    const login = await jit(['login', '--broker', broker.url, '--token-stdin'], { env, input: broker.token });
    assert.equal(login.code, 0, login.stderr);

    const result = await jit(['run', '--scope', 'datasets/train', '--', 'true'], { env: { ...env, JIT_BROKER_URL: trap.url } });
    assert.equal(result.code, 3);
    assert.match(result.stderr, new RegExp(`^jit: error: not logged in to ${trap.url}; run \`jit login --broker ${trap.url}\``));
    assert.deepEqual(trap.headers, [], 'the trap saw no request at all');
    await jit(['logout'], { env });
  });

  it('refuses JIT_TOKEN without JIT_BROKER_URL instead of guessing where to send it', async () => {
    const env = await testEnv({ JIT_TOKEN: broker.token });
    const result = await jit(['run', '--scope', 'datasets/train', '--', 'true'], { env });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /^jit: error: JIT_TOKEN is set but JIT_BROKER_URL is not; set both/);
  });
});

describe('parallel jit runs on one keychain', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker();
  });
  after(() => broker.cleanup());

  it('all succeed, the index holds every one of them while they run, and each cleans up after itself', async (t) => {
    if (!(await realKeychain(t))) return;
    const env = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token, JIT_KEYCHAIN: 'require' });
    const barrier = path.join(await mkdtemp(path.join(tmpdir(), 'jit-barrier-')), 'go');
    // Each job says its grant id, then waits for the barrier file, so all six are live at once.
    const job = `process.stdout.write(process.env.JIT_GRANT_ID + "\\n"); setInterval(() => require("fs").existsSync(process.argv[1]) && process.exit(0), 20)`;
    const runs = Array.from(
      { length: 6 },
      () => new JitProcess(['run', '--scope', 'datasets/train', '--', 'node', '-e', job, barrier], { env }),
    );
    try {
      const ids = await Promise.all(runs.map(async (run) => (await run.readUntil('stdout', /(g_[0-9a-f]{20})\n/))[1]));
      assert.deepEqual(Object.keys(await localGrants(env)).sort(), [...ids].sort(), 'every live grant is in the local index');
    } finally {
      await writeFile(barrier, '');
    }
    const results = await Promise.all(runs.map((run) => run.done));
    for (const result of results) {
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stderr, '');
    }
    const { body } = await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants');
    assert.equal(body.grants.length, 6);
    assert.ok(body.grants.every((grant) => grant.state === 'revoked'));
    assert.deepEqual(await localGrants(env), {});
  });
});

describe('the reaper judges only wrappers it can see', () => {
  let broker: TestBroker;
  let scratch: string;
  before(async () => {
    broker = await startTestBroker();
    scratch = await mkdtemp(path.join(tmpdir(), 'jit-reaper-'));
  });
  after(async () => {
    await broker.cleanup();
    await rm(scratch, { recursive: true, force: true });
  });

  /** A grant the broker issued, entered in the local index as if a `jit run` with `wrapper` held it. */
  async function indexed(env: NodeJS.ProcessEnv, wrapper: NonNullable<LocalGrant['wrapper']>): Promise<string> {
    const { body } = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes: ['datasets/train'] });
    const entry: LocalGrant = {
      id: body.id,
      profile: 'default',
      brokerUrl: broker.url,
      auth: 'env',
      scopes: body.scopes,
      pid: wrapper.pid,
      wrapper,
      command: 'python3 train.py',
      createdAt: body.createdAt,
      expiresAt: body.expiresAt,
      state: 'active',
    };
    const file = indexFile(env);
    const current = await readFile(file, 'utf8').then(
      (text) => JSON.parse(text) as { grants: Record<string, LocalGrant> },
      () => ({ profiles: {}, grants: {} as Record<string, LocalGrant> }),
    );
    current.grants[body.id] = entry;
    await writeFile(file, JSON.stringify(current), { mode: 0o600 });
    return body.id;
  }

  const stateOf = async (id: string) => (await api<GrantView>(broker, broker.token, 'GET', `grants/${id}`)).body.state;

  it("leaves another host's grant alone, and reaps a grant whose pid now belongs to another process", async () => {
    const env = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token, JIT_CONFIG_DIR: scratch });
    const elsewhere = await indexed(env, { pid: 999_999, host: `not-${os.hostname()}`, bootId: 'other-boot', startTicks: 1 });
    const reused = await indexed(env, { pid: process.pid, host: os.hostname(), bootId: '', startTicks: 1 });

    const result = await jit(['grants', '--json'], { env });
    assert.equal(result.code, 0, result.stderr);
    const listed = (JSON.parse(result.stdout) as { grants: { id: string }[] }).grants.map((grant) => grant.id);
    assert.deepEqual(listed, [elsewhere]);
    assert.equal(await stateOf(elsewhere), 'active', "another machine's live job keeps its grant");
    assert.equal(await stateOf(reused), 'revoked', 'a pid that started at another time is not our wrapper');
  });

  it('copes with an index entry written without a wrapper record, judging it by its pid', async () => {
    const env = await testEnv({
      JIT_BROKER_URL: broker.url,
      JIT_TOKEN: broker.token,
      JIT_CONFIG_DIR: await mkdtemp(path.join(scratch, 'old-')),
    });
    const dead = await indexed(env, { pid: 999_999, host: os.hostname(), bootId: '', startTicks: 0 });
    const file = indexFile(env);
    const index = JSON.parse(await readFile(file, 'utf8')) as { grants: Record<string, Partial<LocalGrant>> };
    delete index.grants[dead]?.wrapper;
    await writeFile(file, JSON.stringify(index));

    const result = await jit(['grants'], { env });
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, 'No live grants on this machine.\n');
    assert.equal(await stateOf(dead), 'revoked');
  });
});

describe('malformed names are refused before anything happens', () => {
  it('jit broker init --admin with YAML in it: exit 2, no directory written', async () => {
    const dir = path.join(await mkdtemp(path.join(tmpdir(), 'jit-admin-')), 'b');
    const result = await jit(['broker', 'init', '--dir', dir, '--admin', 'x", "group:everyone'], { env: await testEnv() });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /^jit: error: invalid --admin "x", "group:everyone"; use 1-64 letters/);
    await assert.rejects(readFile(path.join(dir, 'broker.yaml')));
  });

  it('jit revoke with something that is not a grant id: exit 2 without asking the broker', async () => {
    const result = await jit(['revoke', 'nope'], { env: await testEnv({ JIT_BROKER_URL: 'http://127.0.0.1:9', JIT_TOKEN: 'jit_x' }) });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /^jit: error: "nope" is not a grant id; grant ids look like g_/);
  });
});
