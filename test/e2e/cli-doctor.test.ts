import assert from 'node:assert/strict';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, request } from 'node:http';
import { createServer } from 'node:net';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import type { LocalGrant } from '../../src/config/local.ts';
import { jit, testEnv } from '../helpers/cli.ts';
import { assertReleased, brokerGrant, indexFile, localGrants } from '../helpers/state.ts';
import { setUp, skipWithoutTerminal, startJit } from './support.ts';

type Check = { name: string; status: 'pass' | 'warn' | 'fail'; detail: string; fix?: string };
type Report = { checks: Check[]; ok: boolean };

const NAMES = ['broker', 'clock', 'auth', 'keychain', 'config', 'grants'];

async function doctor(env: NodeJS.ProcessEnv, flags: string[] = []): Promise<{ code: number | null; report: Report; stderr: string }> {
  const result = await jit(['doctor', '--json', ...flags], { env });
  return { code: result.code, report: JSON.parse(result.stdout) as Report, stderr: result.stderr };
}

function check(report: Report, name: string): Check {
  const found = report.checks.find((each) => each.name === name);
  assert.ok(found, `no ${name} check in ${JSON.stringify(report)}`);
  return found;
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  assert.ok(address && typeof address === 'object');
  return address.port;
}

/**
 * A loopback HTTP proxy in front of the real broker that passes every request and response
 * through unchanged except the response's Date header, moved `shiftMs` later: to jit, a broker
 * whose clock runs ahead of this machine's. Closed when the test ends.
 */
async function dateShiftingProxy(t: TestContext, brokerUrl: string, shiftMs: number): Promise<string> {
  const target = new URL(brokerUrl);
  const proxy = createHttpServer((incoming, outgoing) => {
    const forwarded = request(
      { host: target.hostname, port: target.port, method: incoming.method, path: incoming.url, headers: incoming.headers },
      (answer) => {
        const date = answer.headers.date;
        const headers = { ...answer.headers, ...(date ? { date: new Date(Date.parse(date) + shiftMs).toUTCString() } : {}) };
        outgoing.writeHead(answer.statusCode ?? 502, headers);
        answer.pipe(outgoing);
      },
    );
    forwarded.on('error', (error) => outgoing.destroy(error));
    incoming.pipe(forwarded);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => proxy.close(resolve)));
  const address = proxy.address();
  assert.ok(address && typeof address === 'object');
  return `http://127.0.0.1:${address.port}`;
}

describe('jit doctor', () => {
  it('passes every check against a healthy broker with the real keychain, in JSON and for a person', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const { code, report, stderr } = await doctor(places.env);
    assert.equal(code, 0, stderr);
    assert.deepEqual(
      report.checks.map((each) => each.name),
      NAMES,
    );
    for (const each of report.checks) assert.equal(each.status, 'pass', JSON.stringify(each));
    assert.equal(report.ok, true);
    assert.match(
      check(report, 'broker').detail,
      new RegExp(`^${places.broker.url} \\(JIT_BROKER_URL\\) is up, version \\d+\\.\\d+\\.\\d+`),
    );
    assert.equal(check(report, 'auth').detail, 'authenticated as user:admin (JIT_TOKEN)');
    assert.match(check(report, 'keychain').detail, /^OS keychain via (keytar|napi-keyring): write, read and delete work$/);
    assert.equal(check(report, 'clock').detail, 'in step with the broker');

    const human = await jit(['doctor'], { env: places.env });
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^ok {3}broker {4}http:\/\/127\.0\.0\.1:\d+ \(JIT_BROKER_URL\) is up/m);
    assert.match(human.stdout, /\n\nAll checks passed\.\n$/);
    assert.equal(human.stderr, '');
  });

  it('warns when the broker is over 30 s ahead of this machine (exit 0) and fails over 5 min (exit 1), saying by how much', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const fix = 'sync the system clock (timedatectl set-ntp true, or your OS time settings); grant expiry is kept by the broker';
    // The Date header has whole seconds and the request takes a moment: a second either way.
    for (const [shiftMs, status, code, seconds] of [
      [45_000, 'warn', 0, '4[4-6]'],
      [10 * 60_000, 'fail', 1, '(599|600|601)'],
    ] as const) {
      const env = { ...places.env, JIT_BROKER_URL: await dateShiftingProxy(t, places.broker.url, shiftMs) };
      const { code: exitCode, report, stderr } = await doctor(env);
      assert.equal(exitCode, code, stderr);
      assert.equal(report.ok, status === 'warn');
      const clock = check(report, 'clock');
      assert.equal(clock.status, status, JSON.stringify(clock));
      assert.match(clock.detail, new RegExp(`^this machine is ${seconds} s behind the broker$`));
      assert.equal(clock.fix, fix);
      for (const name of ['broker', 'auth', 'keychain', 'config', 'grants']) {
        assert.equal(check(report, name).status, 'pass', `only the clock is off: ${JSON.stringify(check(report, name))}`);
      }

      const human = await jit(['doctor'], { env });
      assert.equal(human.code, code, human.stderr);
      const mark = status === 'warn' ? 'warn' : 'FAIL';
      assert.match(
        human.stdout,
        new RegExp(`^${mark} clock {5}this machine is ${seconds} s behind the broker\n {15}fix: sync the system clock`, 'm'),
      );
      assert.match(human.stdout, status === 'warn' ? /\n\nNo failures, 1 warning\.\n$/ : /\n\n1 check failed, 0 warnings\.\n$/);
    }
  });

  it('fails the broker check with a closed port, exits 1, and still reports the rest, leftover grants included', async () => {
    const brokerUrl = `http://127.0.0.1:${await closedPort()}`;
    const env = await testEnv({ JIT_BROKER_URL: brokerUrl, JIT_TOKEN: 'jit_not_checked' });
    // A grant whose revocation never reached the broker: the reaper at start cannot finish it either.
    const leftover: LocalGrant = {
      id: 'g_0123456789abcdef0123',
      profile: 'default',
      brokerUrl,
      auth: 'env',
      scopes: ['datasets/train'],
      pid: null,
      wrapper: null,
      command: 'sleep 30',
      createdAt: new Date().toISOString(),
      expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
      state: 'revoke-pending',
    };
    const configDir = env.JIT_CONFIG_DIR ?? '';
    await mkdir(configDir, { recursive: true, mode: 0o700 });
    await writeFile(path.join(configDir, 'config.json'), JSON.stringify({ profiles: {}, grants: { [leftover.id]: leftover } }), {
      mode: 0o600,
    });

    const { code, report } = await doctor(env, ['--keychain', 'memory']);
    assert.equal(code, 1);
    assert.equal(report.ok, false);
    assert.deepEqual(
      report.checks.map((each) => each.name),
      NAMES,
    );
    const broker = check(report, 'broker');
    assert.equal(broker.status, 'fail');
    assert.match(broker.detail, /cannot reach the broker .*connection refused/);
    assert.match(broker.fix ?? '', /check that it is running/);
    assert.deepEqual(check(report, 'auth'), { name: 'auth', status: 'warn', detail: 'not checked: the broker is unreachable' });
    assert.equal(check(report, 'config').status, 'pass');
    const grants = check(report, 'grants');
    assert.equal(grants.status, 'warn');
    assert.match(grants.detail, /1 left over: g_0123456789abcdef0123 \(revoke-pending\)/);
    assert.match(grants.fix ?? '', /`jit revoke ID`/);

    const human = await jit(['doctor', '--keychain', 'memory'], { env });
    assert.equal(human.code, 1);
    assert.match(human.stdout, /^FAIL broker {4}http:\/\/127\.0\.0\.1:\d+ \(JIT_BROKER_URL\): cannot reach the broker/m);
    assert.match(human.stdout, /^ {15}fix: check that it is running/m);
    assert.match(human.stdout, /\n\n1 check failed, 4 warnings\.\n$/);
  });

  it('fails the config check for a 0644 file or a world-writable directory, with the chmod that fixes it', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const configDir = places.env.JIT_CONFIG_DIR ?? '';
    const configFile = path.join(configDir, 'config.json');
    await mkdir(configDir, { recursive: true, mode: 0o700 });
    await writeFile(configFile, JSON.stringify({ profiles: {}, grants: {} }));
    await chmod(configFile, 0o644);

    const loose = await doctor(places.env);
    assert.equal(loose.code, 1, loose.stderr);
    assert.deepEqual(check(loose.report, 'config'), {
      name: 'config',
      status: 'fail',
      detail: `${configFile} has mode 0644, not 0600`,
      fix: `chmod 600 ${configFile}`,
    });
    assert.equal(check(loose.report, 'broker').status, 'pass');

    await chmod(configFile, 0o600);
    await chmod(configDir, 0o777);
    const open = await doctor(places.env);
    assert.equal(open.code, 1);
    assert.equal(check(open.report, 'config').status, 'fail');
    assert.equal(check(open.report, 'config').fix, `chmod 700 ${configDir}`);

    await chmod(configDir, 0o700);
    const fixed = await doctor(places.env);
    assert.equal(fixed.code, 0, JSON.stringify(fixed.report));
    assert.equal(check(fixed.report, 'config').detail, `${configFile} (mode 0600)`);
  });

  it('warns, without failing, when credentials are kept in memory only', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const { code, report } = await doctor(places.env, ['--keychain', 'memory']);
    assert.equal(code, 0);
    assert.equal(report.ok, true);
    const keychain = check(report, 'keychain');
    assert.equal(keychain.status, 'warn');
    assert.match(keychain.detail, /^memory only/);
    assert.match(keychain.fix ?? '', /docs\/keychain\.md/);
  });

  it('fails the auth check for a token the broker refuses, with how to log in', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const env = { ...places.env, JIT_TOKEN: 'jit_wrong' };
    const { code, report } = await doctor(env);
    assert.equal(code, 1);
    assert.equal(check(report, 'broker').status, 'pass');
    const auth = check(report, 'auth');
    assert.equal(auth.status, 'fail');
    assert.match(auth.fix ?? '', /jit login --broker URL/);
  });

  it('shows leftover grants as they are, revokes them with --reap, and offers to on a terminal', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    // Grants held by no process, marked revoke-pending as a jit run does when the broker was down at exit.
    const leftovers: string[] = [];
    for (const _ of [1, 2]) {
      const requested = await jit(['request', '--scope', 'datasets/train'], { env: places.env });
      assert.equal(requested.code, 0, requested.stderr);
      leftovers.push(requested.stdout.match(/^g_[0-9a-f]{20}/)?.[0] ?? '');
    }
    const markRevokePending = async (id: string) => {
      const file = indexFile(places.env);
      const config = JSON.parse(await readFile(file, 'utf8')) as { grants: Record<string, LocalGrant> };
      config.grants[id] = { ...(config.grants[id] as LocalGrant), state: 'revoke-pending' };
      await writeFile(file, JSON.stringify(config), { mode: 0o600 });
    };
    const [first = '', second = ''] = leftovers;
    await markRevokePending(first);

    const shown = await doctor(places.env);
    assert.equal(shown.code, 0, shown.stderr);
    assert.equal(check(shown.report, 'grants').status, 'warn');
    assert.equal(check(shown.report, 'grants').detail, `1 left over: ${first} (revoke-pending)`);
    assert.match(check(shown.report, 'grants').fix ?? '', /jit doctor --reap/);
    assert.equal((await brokerGrant(places.broker, first)).state, 'active', 'doctor alone changes nothing');

    const reaped = await doctor(places.env, ['--reap']);
    assert.equal(reaped.code, 0, reaped.stderr);
    assert.deepEqual(check(reaped.report, 'grants'), { name: 'grants', status: 'pass', detail: `reaped ${first} (revoked)` });
    assert.equal((await brokerGrant(places.broker, first)).state, 'revoked');
    assert.deepEqual(Object.keys(await localGrants(places.env)), [second], 'a grant that is not left over is kept');
    assert.equal((await brokerGrant(places.broker, second)).state, 'active');

    if (skipWithoutTerminal(t)) return;
    await markRevokePending(second);
    const asked = startJit(t, ['doctor'], { env: places.env, terminal: true });
    await asked.readUntil('stdout', /Revoke the 1 leftover grant now\? \(Y\/n\)/);
    asked.child.stdin?.write('y\r');
    const answered = await asked.done;
    assert.equal(answered.code, 0, answered.stdout);
    assert.match(answered.stdout, new RegExp(`grants +reaped ${second} \\(revoked\\)`));
    await assertReleased(places, second);

    const inCi = await jit(['doctor'], { env: { ...places.env, CI: 'true' } });
    assert.equal(inCi.code, 0, inCi.stderr);
    assert.doesNotMatch(inCi.stdout + inCi.stderr, /Revoke the/);
  });
});
