import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { GrantView } from '../../src/core/grant.ts';
import { api, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { JitProcess, jit, terminalAvailable, testEnv } from '../helpers/cli.ts';
import { realKeychain } from '../helpers/keychain.ts';
import { startJit } from './support.ts';

const uniqueProfile = () => `test-${randomBytes(4).toString('hex')}`;
const HEADLESS = { DBUS_SESSION_BUS_ADDRESS: undefined, DISPLAY: undefined };

async function activeGrants(broker: TestBroker): Promise<GrantView[]> {
  const { body } = await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants');
  return body.grants.filter((grant) => grant.state === 'active');
}

describe('jit login / logout on the real keychain', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker();
  });
  after(() => broker.cleanup());

  for (const binding of ['keytar', 'napi-keyring'] as const) {
    it(`keeps the token in the OS keychain through ${binding}, never in the config file, and logout removes it`, async (t) => {
      const keychain = await realKeychain(t, binding);
      if (!keychain) return;
      const profile = uniqueProfile();
      const env = await testEnv({ JIT_KEYCHAIN_BINDING: binding });
      const login = await jit(['login', '--broker', broker.url, '--token-stdin', '--profile', profile], {
        env,
        input: `${broker.token}\n`,
      });
      assert.equal(login.code, 0, login.stderr);
      assert.match(
        login.stdout,
        new RegExp(`Logged in to ${broker.url} as user:admin \\(profile ${profile}; token kept in the OS keychain via ${binding}\\)`),
      );
      assert.equal(login.stderr, '');
      assert.equal(await keychain.get(`token:${profile}`), broker.token);

      const configFile = path.join(env.JIT_CONFIG_DIR ?? '', 'config.json');
      const config = await readFile(configFile, 'utf8');
      assert.ok(!config.includes(broker.token), 'the token is not in the config file');
      assert.equal((JSON.parse(config) as { profiles: Record<string, { brokerUrl: string }> }).profiles[profile]?.brokerUrl, broker.url);
      assert.equal((await stat(configFile)).mode & 0o777, 0o600);

      const run = await jit(
        ['run', '--profile', profile, '--scope', 'datasets/train', '--', 'node', '-e', 'process.stdout.write(process.env.JIT_GRANT_ID)'],
        {
          env,
        },
      );
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout, /^g_[0-9a-f]{20}$/, 'jit run used the token from the keychain');

      const logout = await jit(['logout', '--profile', profile], { env });
      assert.equal(logout.code, 0);
      assert.equal(await keychain.get(`token:${profile}`), undefined);
      const afterLogout = await jit(['run', '--profile', profile, '--scope', 'datasets/train', '--', 'true'], { env });
      assert.equal(afterLogout.code, 3);
      assert.match(afterLogout.stderr, /^jit: error: no broker configured for profile "test-[0-9a-f]+"; run `jit login --broker URL`/);
    });
  }

  it('refuses a bad token with exit 3 and stores nothing', async (t) => {
    const keychain = await realKeychain(t);
    if (!keychain) return;
    const profile = uniqueProfile();
    const env = await testEnv();
    const login = await jit(['login', '--broker', broker.url, '--token-stdin', '--profile', profile], { env, input: 'jit_wrong' });
    assert.equal(login.code, 3);
    assert.match(login.stderr, /^jit: error: the API token is not valid; run `jit login --broker URL`, or set JIT_TOKEN\n$/);
    assert.equal(await keychain.get(`token:${profile}`), undefined);
    const config = await readFile(path.join(env.JIT_CONFIG_DIR ?? '', 'config.json'), 'utf8').catch(() => '{}');
    assert.equal((JSON.parse(config) as { profiles?: Record<string, unknown> }).profiles?.[profile], undefined);
  });

  it('on a terminal asks for the token as a password: the typed token is never shown, and only the keychain keeps it', async (t) => {
    if (!terminalAvailable()) {
      if (process.env.CI === 'true') assert.fail('util-linux `script` is missing; .ci/run installs it');
      return t.skip('no util-linux `script` here to give jit a pseudo-terminal');
    }
    const keychain = await realKeychain(t);
    if (!keychain) return;
    const profile = uniqueProfile();
    const env = await testEnv({ CI: undefined });
    t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
    t.after(() => keychain.delete(`token:${profile}`));
    const login = startJit(t, ['login', '--broker', broker.url, '--profile', profile], { env, terminal: true });
    await login.readUntil('stdout', /API token/);
    login.child.stdin?.write(`${broker.token}\r`);
    const done = await login.done;
    assert.equal(done.code, 0, done.stdout);
    // The pty's output is everything a person (or someone behind them) sees: the prompt, its mask, the result.
    assert.match(done.stdout, new RegExp(`Logged in to ${broker.url.replaceAll('.', '\\.')} as user:admin`));
    // Not the whole token, nor any run of it (a prompt that echoed the first keys before hiding the rest).
    for (let at = 0; at + 8 <= broker.token.length; at++) {
      const piece = broker.token.slice(at, at + 8);
      assert.ok(!done.stdout.includes(piece), `"${piece}", characters ${at} to ${at + 8} of the token, was echoed on the terminal`);
    }
    assert.ok(done.stdout.includes('*'.repeat(broker.token.length)), 'each typed character shows as a mask');
    assert.equal(await keychain.get(`token:${profile}`), broker.token);
    const config = await readFile(path.join(env.JIT_CONFIG_DIR ?? '', 'config.json'), 'utf8');
    assert.ok(!config.includes(broker.token), 'the token is not in the config file');
  });

  it('refuses to take a token without --token-stdin when there is no terminal to prompt on', async () => {
    const result = await jit(['login', '--broker', broker.url], { env: await testEnv() });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /no token given and no terminal to prompt on \(or CI is set\); pipe it in with --token-stdin/);
  });
});

describe('without an OS keychain (headless)', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker();
  });
  after(() => broker.cleanup());

  it('jit run keeps the credential in memory and says so in one stderr line', async () => {
    const env = await testEnv({ ...HEADLESS, JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token });
    const result = await jit(['run', '--scope', 'datasets/train', '--', 'node', '-e', 'process.stdout.write("job ran")'], { env });
    assert.equal(result.code, 0);
    assert.equal(result.stdout, 'job ran');
    const lines = result.stderr.trim().split('\n');
    assert.equal(lines.length, 1, result.stderr);
    assert.match(
      lines[0] ?? '',
      /^jit: warning: no OS keychain reachable, keeping credentials in memory only \(.+\); see docs\/keychain\.md$/,
    );
    assert.deepEqual(await activeGrants(broker), []);
  });

  it('jit run --json leaves stdout to the job alone', async () => {
    const env = await testEnv({ ...HEADLESS, JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token });
    const result = await jit(
      ['run', '--json', '--keychain', 'memory', '--scope', 'datasets/train', '--', 'node', '-e', 'process.stdout.write("only this")'],
      { env },
    );
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, 'only this');
    assert.equal(result.stderr, '', 'memory storage that was asked for is not warned about');
  });

  it('--keychain require (or JIT_KEYCHAIN=require) makes it an error before any grant is issued', async () => {
    const before = (await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants')).body.grants.length;
    for (const [args, extra] of [
      [['--keychain', 'require'], {}],
      [[], { JIT_KEYCHAIN: 'require' }],
    ] as const) {
      const env = await testEnv({ ...HEADLESS, ...extra, JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token });
      const result = await jit(['run', ...args, '--scope', 'datasets/train', '--', 'true'], { env });
      assert.equal(result.code, 7);
      assert.match(result.stderr, /^jit: error: no OS keychain is reachable \(.+\); start a Secret Service .*docs\/keychain\.md.*\n$/);
    }
    assert.equal((await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants')).body.grants.length, before);
  });

  it('jit login refuses to keep a token in memory and points to JIT_TOKEN', async () => {
    const env = await testEnv(HEADLESS);
    const result = await jit(['login', '--broker', broker.url, '--token-stdin'], { env, input: broker.token });
    assert.equal(result.code, 7);
    assert.match(result.stderr, /jit: error: no OS keychain to keep the token in; set JIT_BROKER_URL and JIT_TOKEN instead/);
  });
});

describe('jit grants and jit revoke', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker();
  });
  after(() => broker.cleanup());

  it('lists the live grant of a running job without secrets, and revoke ends it on the broker', async () => {
    const env = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token });
    const job = new JitProcess(
      ['run', '--scope', 'datasets/train', '--', 'node', '-e', 'console.log(process.env.JIT_GRANT_ID); setTimeout(() => {}, 30000)'],
      { env },
    );
    try {
      const [, id] = await job.readUntil('stdout', /(g_[0-9a-f]{20})\n/);
      const listed = await jit(['grants', '--json'], { env });
      assert.equal(listed.code, 0);
      const { grants } = JSON.parse(listed.stdout) as {
        grants: { id: string; scopes: string[]; pid: number; state: string; command: string }[];
      };
      assert.equal(grants.length, 1);
      assert.equal(grants[0]?.id, id);
      assert.deepEqual(grants[0]?.scopes, ['datasets/train']);
      assert.equal(grants[0]?.pid, job.child.pid);
      assert.equal(grants[0]?.state, 'active');
      assert.match(grants[0]?.command ?? '', /^node -e /);
      assert.ok(!listed.stdout.includes('jitc_'), 'no credential in the listing');
      const human = await jit(['grants'], { env });
      assert.match(human.stdout, new RegExp(`^ID +STATE +SCOPES +EXPIRES +TIME LEFT +PID +COMMAND\\n${id} +active +datasets/train `));

      const revoked = await jit(['revoke', id ?? ''], { env });
      assert.equal(revoked.code, 0, revoked.stderr);
      assert.match(revoked.stdout, new RegExp(`^${id}: revoked at \\S+`));
      const { body } = await api<GrantView>(broker, broker.token, 'GET', `grants/${id}`);
      assert.equal(body.state, 'revoked');
      assert.equal((await jit(['grants', '--json'], { env })).stdout.includes(id ?? ''), false);
    } finally {
      job.kill('SIGTERM');
      await job.done;
    }
  });

  it('revoke --all ends every grant this machine holds; an unknown id exits 5', async () => {
    const env = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token });
    const jobs = [1, 2].map(
      () =>
        new JitProcess(['run', '--scope', 'datasets/train', '--', 'node', '-e', 'console.log("up"); setTimeout(() => {}, 30000)'], { env }),
    );
    try {
      await Promise.all(jobs.map((job) => job.readUntil('stdout', /up/)));
      assert.equal((await activeGrants(broker)).length, 2);
      const result = await jit(['revoke', '--all', '--yes', '--json'], { env });
      assert.equal(result.code, 0, result.stderr);
      assert.equal((JSON.parse(result.stdout) as { revoked: unknown[] }).revoked.length, 2);
      assert.deepEqual(await activeGrants(broker), []);
    } finally {
      for (const job of jobs) job.kill('SIGTERM');
      await Promise.all(jobs.map((job) => job.done));
    }
    const unknown = await jit(['revoke', 'g_00000000000000000000'], { env });
    assert.equal(unknown.code, 5);
    assert.match(unknown.stderr, /^jit: error: no grant g_0+; list your grants with `jit grants`\n$/);
    const json = await jit(['revoke', 'g_00000000000000000000', '--json'], { env });
    assert.deepEqual(JSON.parse(json.stdout), {
      error: { code: 'not_found', message: 'no grant g_00000000000000000000', hint: 'list your grants with `jit grants`', exitCode: 5 },
    });
  });
});
