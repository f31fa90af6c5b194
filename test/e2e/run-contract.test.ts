// End-to-end contract of `jit run`: the real bin/jit against a real broker on loopback and the
// real OS keychain. Signals, kills and heartbeats are in run-signals.test.ts.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { accounts } from '../../src/secrets/store.ts';
import { readGranted, SAMPLE_FILES } from '../helpers/broker.ts';
import { jit } from '../helpers/cli.ts';
import { assertHeld, assertReleased, brokerGrants, indexFile, localGrants, onlyGrant } from '../helpers/state.ts';
import { job, lines, runArgs, setUp, startJit } from './support.ts';

test('the job gets JIT_GRANT_ID, JIT_EXPIRES_AT and its data credentials, and none of jit’s own settings', async (t) => {
  const places = await setUp(t);
  if (!places) return;
  const { broker, env } = places;
  const parentEnv = { ...env, JIT_PROFILE: 'default', E2E_PASSED_THROUGH: 'kept' };

  const result = await jit(runArgs(job('env-probe.mjs')), { env: parentEnv });

  assert.equal(result.stderr, '');
  assert.equal(result.code, 0);
  const report = JSON.parse(result.stdout) as {
    env: Record<string, string>;
    train: { status: number; text: string };
    eval: { status: number };
  };
  const grant = await onlyGrant(broker);
  const jitVariables = Object.keys(report.env).filter((name) => name.startsWith('JIT_'));
  assert.deepEqual(jitVariables.sort(), [
    'JIT_EXPIRES_AT',
    'JIT_FILES_TOKEN',
    'JIT_FILES_URL',
    'JIT_GRANT_ID',
    'JIT_S3_BUCKET',
    'JIT_S3_PREFIX',
    'JIT_S3_URIS',
  ]);
  assert.deepEqual([report.env.JIT_S3_BUCKET, report.env.JIT_S3_PREFIX], ['datasets', 'train/']);
  assert.equal(report.env.AWS_ENDPOINT_URL, `${broker.url}/s3`);
  assert.equal(report.env.AWS_SESSION_TOKEN, report.env.JIT_FILES_TOKEN, 'the S3 session token is the grant credential');
  assert.equal(report.env.JIT_GRANT_ID, grant.id);
  assert.equal(report.env.JIT_EXPIRES_AT, grant.expiresAt);
  assert.equal(report.env.JIT_FILES_URL, `${broker.url}/v1/files`);
  assert.equal(report.env.E2E_PASSED_THROUGH, 'kept', 'the rest of the parent environment passes through');
  assert.equal(report.env.HOME, env.HOME);
  const values = Object.values(report.env);
  assert.ok(!values.some((value) => value.includes(broker.token)), 'the API token does not reach the job');
  assert.ok(!values.includes(env.JIT_CONFIG_DIR ?? ''), 'the config dir does not reach the job');

  assert.equal(report.train.status, 200, 'the credential reads the granted dataset');
  assert.equal(report.train.text, SAMPLE_FILES['train/shard-0000.jsonl']);
  assert.equal(report.eval.status, 403, 'the credential does not read a dataset it was not granted');
  await assertReleased(places, grant.id);
  assert.equal((await readGranted(broker.url, report.env.JIT_FILES_TOKEN ?? '', 'datasets/train/shard-0000.jsonl')).status, 401);
});

test('stdin, stdout and stderr pass through byte for byte, and jit adds nothing to them', async (t) => {
  const places = await setUp(t);
  if (!places) return;
  const everyByte = Buffer.from(Array.from({ length: 256 }, (_, value) => value));
  const input = Buffer.concat([everyByte, randomBytes(64 * 1024), everyByte]);

  const copyToBoth = "process.stdin.on('data', (chunk) => { process.stdout.write(chunk); process.stderr.write(chunk); })";

  const result = await jit(runArgs([process.execPath, '-e', copyToBoth]), { env: places.env, input });

  assert.equal(result.code, 0);
  assert.ok(result.stdoutBytes.equals(input), 'stdout is the job’s output, unchanged');
  assert.ok(result.stderrBytes.equals(input), 'stderr is the job’s output, unchanged, with nothing from jit');
  await assertReleased(places, (await onlyGrant(places.broker)).id);
});

test('-v tells on stderr which grant was issued and revoked; stdout stays the job’s', async (t) => {
  const places = await setUp(t);
  if (!places) return;

  const result = await jit(runArgs(['sh', '-c', 'echo job output'], ['-v']), { env: places.env });

  assert.equal(result.code, 0);
  assert.equal(result.stdout, 'job output\n');
  const { id } = await onlyGrant(places.broker);
  const said = lines(result.stderr);
  assert.equal(said.length, 2, result.stderr);
  assert.match(said[0] ?? '', new RegExp(`^jit: grant ${id} active for datasets/train, expires \\S+$`));
  assert.match(said[1] ?? '', new RegExp(`^jit: grant ${id} revoked$`));
  await assertReleased(places, id);
});

// Every way a job can end: jit mirrors it in its exit status, says nothing, and leaves nothing.
const endings: { how: string; order: string; exitCode: number }[] = [
  { how: 'exits 0', order: '0', exitCode: 0 },
  { how: 'exits 3', order: '3', exitCode: 3 },
  { how: 'exits 42', order: '42', exitCode: 42 },
  { how: 'kills itself with SIGTERM', order: 'SIGTERM', exitCode: 143 },
  { how: 'kills itself with SIGKILL', order: 'SIGKILL', exitCode: 137 },
];
for (const { how, order, exitCode } of endings) {
  test(`a job that ${how}: jit exits ${exitCode}, and the grant, live while the job ran, is gone everywhere`, async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const running = startJit(t, runArgs(job('held-job.mjs')), { env: places.env });
    const [, grantId = ''] = await running.readUntil('stdout', /ready (\S+)\n/);
    await assertHeld(places, grantId, running.child.pid);

    running.child.stdin?.end(`${order}\n`);
    const result = await running.done;

    assert.equal(result.signal, null, 'jit itself exits; it is not killed');
    assert.equal(result.code, exitCode);
    assert.equal(result.stdout, `ready ${grantId}\n`, 'jit prints nothing on stdout');
    assert.equal(result.stderr, '', 'jit prints nothing on stderr');
    await assertReleased(places, grantId);
  });
}

test('a command that does not exist: exit 127, one line saying so, grant revoked', async (t) => {
  const places = await setUp(t);
  if (!places) return;

  const result = await jit(runArgs(['no-such-command-e2e', '--flag']), { env: places.env });

  assert.equal(result.code, 127);
  assert.equal(result.stdout, '');
  assert.match(result.stderr, /^jit: error: command not found: no-such-command-e2e; [^\n]*\n$/);
  await assertReleased(places, (await onlyGrant(places.broker)).id);
});

test('a file that is not executable: exit 126, one line saying so, grant revoked', async (t) => {
  const places = await setUp(t);
  if (!places) return;
  const script = path.join(places.env.HOME ?? '', 'job.sh');
  await writeFile(script, 'echo should not run\n', { mode: 0o644 });

  const result = await jit(runArgs([script]), { env: places.env });

  assert.equal(result.code, 126);
  assert.equal(result.stdout, '');
  assert.match(result.stderr, /^jit: error: cannot run [^\n]*job\.sh[^\n]*\n$/);
  await assertReleased(places, (await onlyGrant(places.broker)).id);
});

test('broker gone when the job ends: jit still exits with the job’s code, warns, keeps the grant revoke-pending; the next jit command revokes it', async (t) => {
  const places = await setUp(t);
  if (!places) return;
  const { broker, env, keychain } = places;
  const running = startJit(t, runArgs(job('held-job.mjs')), { env });
  const [, grantId = ''] = await running.readUntil('stdout', /ready (\S+)\n/);
  const credential = await assertHeld(places, grantId, running.child.pid);

  await broker.stop();
  running.child.stdin?.end('5\n');
  const result = await running.done;

  assert.equal(result.code, 5);
  assert.equal(result.stdout, `ready ${grantId}\n`);
  const said = lines(result.stderr);
  assert.equal(said.length, 1, result.stderr);
  assert.match(said[0] ?? '', new RegExp(`^jit: warning: could not revoke grant ${grantId} \\(cannot reach the broker at ${broker.url}`));
  assert.ok(!result.stderr.includes(credential));
  assert.equal((await localGrants(env))[grantId]?.state, 'revoke-pending');
  assert.equal(await keychain.get(accounts.grant(grantId)), undefined, 'the credential left the keychain even so');

  await broker.restart();
  const later = await jit(['grants'], { env });

  assert.equal(later.code, 0, later.stderr);
  assert.equal(later.stdout, 'No live grants on this machine.\n');
  await assertReleased(places, grantId);
});

test('no secret in any process’s argv, in jit’s output (even with -v) or in the index file, which only its owner can read', async (t) => {
  const places = await setUp(t);
  if (!places) return;
  const { broker, env } = places;
  const running = startJit(t, runArgs(job('held-job.mjs'), ['-v']), { env });
  const [, grantId = ''] = await running.readUntil('stdout', /ready (\S+)\n/);
  const credential = await assertHeld(places, grantId, running.child.pid);
  const secrets = { 'grant credential': credential, 'API token': broker.token };

  const argvs = await everyCommandLine();
  assert.ok(
    argvs.some((argv) => argv.includes('held-job.mjs')),
    'the scan sees the job’s own command line',
  );
  const indexWhileRunning = await readFile(indexFile(env), 'utf8');
  assert.ok(indexWhileRunning.includes(grantId), 'the index file lists the running grant');
  assert.equal((await stat(indexFile(env))).mode & 0o777, 0o600);
  running.child.stdin?.end('0\n');
  const result = await running.done;
  assert.equal(result.code, 0);
  assert.match(result.stderr, new RegExp(`grant ${grantId} revoked`), '-v did talk about the grant');

  for (const [name, secret] of Object.entries(secrets)) {
    assert.ok(!argvs.some((argv) => argv.includes(secret)), `the ${name} is in no process’s argv`);
    assert.ok(!result.stdout.includes(secret) && !result.stderr.includes(secret), `the ${name} is not in jit’s output`);
    assert.ok(!indexWhileRunning.includes(secret), `the ${name} is not in the index file`);
    assert.ok(!(await readFile(indexFile(env), 'utf8')).includes(secret), `the ${name} is not in the index file afterwards`);
  }
  assert.equal((await stat(indexFile(env))).mode & 0o777, 0o600);
});

/** The argv of every process on the machine, NULs turned to spaces (processes that end mid-scan are skipped). */
async function everyCommandLine(): Promise<string[]> {
  const pids = (await readdir('/proc')).filter((name) => /^\d+$/.test(name));
  const argvs = await Promise.all(
    pids.map((pid) =>
      readFile(`/proc/${pid}/cmdline`, 'utf8').then(
        (text) => text.replaceAll('\0', ' '),
        () => '',
      ),
    ),
  );
  return argvs.filter((argv) => argv !== '');
}

// Bad input: one line on stderr, the documented exit code, the command never runs, and nothing is
// left anywhere. The broker issues no grant at all, so there is no grant:<id> the keychain could hold.
const badInputs: { what: string; args: string[]; env?: () => Promise<Record<string, string>>; exitCode: number; says: RegExp }[] = [
  {
    what: 'an unknown resource',
    args: ['run', '--scope', 'dataset'],
    exitCode: 2,
    says: /^jit: error: unknown resource "dataset"; did you mean "datasets"\?$/,
  },
  {
    what: 'a TTL without a unit',
    args: ['run', '--scope', 'datasets/train', '--ttl', '30'],
    exitCode: 2,
    says: /^jit: error: invalid --ttl "30"; add a unit/,
  },
  {
    what: 'a TTL that is no duration',
    args: ['run', '--scope', 'datasets/train', '--ttl', 'abc'],
    exitCode: 2,
    says: /^jit: error: invalid --ttl "abc"/,
  },
  {
    what: 'a TTL over the policy maximum',
    args: ['run', '--scope', 'datasets/train', '--ttl', '9h'],
    exitCode: 2,
    says: /^jit: error: ttl 9h is longer than the 8h the policy allows/,
  },
  {
    what: 'an unknown flag',
    args: ['run', '--scope', 'datasets/train', '--frobnicate'],
    exitCode: 2,
    says: /^jit: error: unknown option '--frobnicate'/,
  },
  {
    what: 'an action the resource does not have',
    args: ['run', '--scope', 'datasets/train:execute'],
    exitCode: 2,
    says: /^jit: error: action "execute" does not apply to files resource "datasets"/,
  },
  {
    what: 'a bad API token',
    args: ['run', '--scope', 'datasets/train'],
    env: async () => ({ JIT_TOKEN: 'jit_not-a-real-token' }),
    exitCode: 3,
    says: /^jit: error: the API token is not valid; run `jit login/,
  },
  {
    what: 'a broker that is not running',
    args: ['run', '--scope', 'datasets/train'],
    env: async () => ({ JIT_BROKER_URL: `http://127.0.0.1:${await closedPort()}` }),
    exitCode: 6,
    says: /^jit: error: cannot reach the broker at http:\/\/127\.0\.0\.1:\d+ \(connection refused\)/,
  },
];
for (const { what, args, env: extraEnv, exitCode, says } of badInputs) {
  test(`${what}: exit ${exitCode}, one line on stderr, nothing left behind`, async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const env = { ...places.env, ...(await extraEnv?.()) };

    const result = await jit([...args, '--', 'sh', '-c', 'echo the job ran'], { env });

    assert.equal(result.code, exitCode, result.stderr);
    assert.equal(result.stdout, '', 'nothing on stdout, and the job never ran');
    const said = lines(result.stderr);
    assert.equal(said.length, 1, result.stderr);
    assert.match(said[0] ?? '', says);
    assert.deepEqual(await brokerGrants(places.broker), [], 'no grant was issued');
    assert.deepEqual(await localGrants(places.env), {}, 'the local index is empty');
  });
}

test('no command after --: exit 2, one line on stderr, no grant', async (t) => {
  const places = await setUp(t);
  if (!places) return;

  const result = await jit(['run', '--scope', 'datasets/train'], { env: places.env });

  assert.equal(result.code, 2);
  assert.equal(result.stdout, '');
  assert.match(result.stderr, /^jit: error: no command to run; put it after --[^\n]*\n$/);
  assert.deepEqual(await brokerGrants(places.broker), []);
  assert.deepEqual(await localGrants(places.env), {});
});

/** A loopback port nothing listens on: one the OS just handed out and took back. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
