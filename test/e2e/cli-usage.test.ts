// The real bin/jit: global flags before or after the command words, usage errors that show the
// command's usage and exit 2, groups without a subcommand, and the spinner on a slow broker (a
// real broker behind a loopback proxy that holds each connection back), shown only on a terminal
// and never with --no-color, NO_COLOR or --json.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { describe, type TestContext, test } from 'node:test';
import { startTestBroker } from '../helpers/broker.ts';
import { jit, testEnv } from '../helpers/cli.ts';
import { setUp, skipWithoutTerminal, startJit } from './support.ts';

/** A TCP proxy to `target` that connects each client only after `delayMs`: a broker that is slow to answer. */
async function slowProxy(t: TestContext, target: string, delayMs: number): Promise<string> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.pause();
    setTimeout(() => {
      const upstream = connect(Number(port), hostname, () => {
        client.pipe(upstream).pipe(client);
        client.resume();
      });
      sockets.add(upstream);
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
    }, delayMs);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe('global flags', () => {
  test('work before the command words as after them', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const after = await jit(['whoami', '--json'], { env: places.env });
    assert.equal(after.code, 0, after.stderr);
    const before = await jit(['--json', 'whoami'], { env: places.env });
    assert.equal(before.code, 0, before.stderr);
    assert.deepEqual(JSON.parse(before.stdout), JSON.parse(after.stdout));
    assert.equal((JSON.parse(before.stdout) as { subject: string }).subject, 'user:admin');

    // Flags with values, in both spellings, and a group's words (broker token list).
    const list = await jit(['--broker', places.broker.url, '-q', '--json', 'broker', 'token', 'list'], { env: places.env });
    assert.equal(list.code, 0, list.stderr);
    assert.ok(Array.isArray((JSON.parse(list.stdout) as { tokens: unknown[] }).tokens));
    const profile = await jit(['--profile=nope', '--json', 'config', 'list'], { env: places.env });
    assert.equal(profile.code, 0, profile.stderr);
    assert.equal((JSON.parse(profile.stdout) as { active: string }).active, 'nope');
  });

  test('before the command words only global flags are taken, and the error names the one that is not', async () => {
    const env = await testEnv();
    try {
      const result = await jit(['--json', '--ttl', '1h', 'run', '--', 'true'], { env });
      assert.equal(result.code, 2);
      assert.equal((JSON.parse(result.stdout) as { error: { message: string } }).error.message, "unknown option '--ttl'");
    } finally {
      await rm(env.HOME ?? '', { recursive: true, force: true });
    }
  });
});

describe('usage errors', () => {
  test("a missing argument, an unknown flag or a stray argument: one line with the command's usage, exit 2", async () => {
    const env = await testEnv();
    try {
      const missing = await jit(['renew'], { env });
      assert.equal(missing.code, 2);
      assert.equal(missing.stdout, '');
      assert.equal(
        missing.stderr,
        "jit: error: missing required argument 'id'; usage: jit renew [options] <id>; `jit renew --help` explains each flag\n",
      );

      const unknown = await jit(['grants', '--frobnicate'], { env });
      assert.equal(unknown.code, 2);
      assert.equal(
        unknown.stderr,
        "jit: error: unknown option '--frobnicate'; usage: jit grants [options]; `jit grants --help` explains each flag\n",
      );

      // `audit` also holds `audit verify`: the usage is audit's own, not a command that does not exist.
      const stray = await jit(['audit', 'bogus'], { env });
      assert.equal(stray.code, 2);
      assert.match(
        stray.stderr,
        /^jit: error: too many arguments for 'audit'\. Expected 0 arguments but got 1; usage: jit audit \[options\] \[command\]; `jit audit --help` explains each flag\n$/,
      );

      const json = await jit(['renew', '--json'], { env });
      assert.equal(json.code, 2);
      assert.equal(json.stderr, '');
      assert.deepEqual(JSON.parse(json.stdout), {
        error: {
          code: 'usage',
          message: "missing required argument 'id'",
          hint: 'usage: jit renew [options] <id>; `jit renew --help` explains each flag',
          exitCode: 2,
        },
      });
    } finally {
      await rm(env.HOME ?? '', { recursive: true, force: true });
    }
  });

  test('a group without its subcommand prints its help on stderr and exits 2; asking for help exits 0', async () => {
    const env = await testEnv();
    try {
      for (const args of [[], ['config'], ['broker', 'token']]) {
        const result = await jit(args, { env });
        assert.equal(result.code, 2, `jit ${args.join(' ')}`);
        assert.equal(result.stdout, '');
        assert.match(result.stderr, new RegExp(`^Usage: ${['jit', ...args].join(' ')} \\[options\\] \\[command\\]\\n`));
      }
      for (const args of [['--help'], ['config', '--help'], ['help', 'run']]) {
        const result = await jit(args, { env });
        assert.equal(result.code, 0, `jit ${args.join(' ')}`);
        assert.match(result.stdout, /^Usage: jit/);
      }
    } finally {
      await rm(env.HOME ?? '', { recursive: true, force: true });
    }
  });
});

describe('the spinner on a slow broker', () => {
  test('shows on a terminal while the broker is slow, and never with --no-color, NO_COLOR or --json', async (t) => {
    if (skipWithoutTerminal(t)) return;
    const broker = await startTestBroker();
    t.after(() => broker.cleanup());
    const slow = await slowProxy(t, broker.url, 1_500);
    // testEnv sets NO_COLOR for every other test; here the default is a person's terminal.
    const env = await testEnv({ JIT_BROKER_URL: slow, JIT_TOKEN: broker.token, NO_COLOR: undefined });
    t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));

    const spinning = startJit(t, ['whoami'], { env, terminal: true });
    await spinning.readUntil('stdout', new RegExp(`asking ${slow.replaceAll('.', '\\.')}`));
    const shown = await spinning.done;
    assert.equal(shown.code, 0, shown.stdout);
    assert.match(shown.stdout, /subject\s+user:admin/);

    for (const [flags, extra] of [
      [['--no-color'], {}],
      [[], { NO_COLOR: '1' }],
      [['--json'], {}],
    ] as const) {
      const plain = startJit(t, ['whoami', ...flags], { env: { ...env, ...extra }, terminal: true });
      const finished = await plain.done;
      assert.equal(finished.code, 0, finished.stdout);
      assert.doesNotMatch(finished.stdout, /asking/, `flags ${flags.join(' ')} ${JSON.stringify(extra)}`);
      assert.match(finished.stdout, /user:admin/);
    }
  });
});
