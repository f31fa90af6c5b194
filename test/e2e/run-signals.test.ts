// End-to-end contract of `jit run` under signals and kills, and of the heartbeat that keeps a
// grant alive only while its jit lives: the real bin/jit, a real broker, the real OS keychain.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { accounts } from '../../src/secrets/store.ts';
import { readGranted, SAMPLE_FILES } from '../helpers/broker.ts';
import { jit, killGroup, terminalAvailable } from '../helpers/cli.ts';
import { assertHeld, assertReleased, brokerGrant, GRANTED_FILE, localGrants, waitFor } from '../helpers/state.ts';
import { job, runArgs, setUp, startJit } from './support.ts';

/** Where signal-counter.mjs writes what it received; removed when the test ends. */
async function reportFile(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'jit-signals-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return path.join(dir, 'signals.json');
}

/** Whether a pseudo-terminal can be had; a test without one skips, except under CI=true, where it fails. */
function withTerminal(t: TestContext): boolean {
  if (terminalAvailable()) return true;
  if (process.env.CI === 'true') assert.fail('util-linux `script` is missing; .ci/run installs it');
  t.skip('no util-linux `script` here to give jit a pseudo-terminal');
  return false;
}

const received = async (report: string) => JSON.parse(await readFile(report, 'utf8')) as Record<string, number>;

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const) {
  test(`${signal} sent to jit reaches the job exactly once; jit exits with the job’s code and revokes`, async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const report = await reportFile(t);
    const running = startJit(t, runArgs(job('signal-counter.mjs', report)), { env: places.env });
    const [, grantId = ''] = await running.readUntil('stdout', /ready (\S+) /);
    await assertHeld(places, grantId, running.child.pid);

    process.kill(running.child.pid ?? 0, signal);
    const result = await running.done;

    assert.deepEqual(await received(report), { [signal]: 1 });
    assert.equal(result.code, 23, 'the job’s own exit code after handling the signal');
    assert.equal(result.stderr, '');
    await assertReleased(places, grantId);
  });
}

for (const [keys, signal, name] of [
  ['\x03', 'SIGINT', 'Ctrl-C'],
  ['\x1c', 'SIGQUIT', 'Ctrl-\\'],
] as const) {
  test(`${name} in a terminal reaches the job exactly once, though the terminal signals jit and the job alike`, async (t) => {
    if (!withTerminal(t)) return;
    const places = await setUp(t);
    if (!places) return;
    const report = await reportFile(t);
    const running = startJit(t, runArgs(job('signal-counter.mjs', report)), { env: places.env, terminal: true });
    // The terminal echoes and spinners into the same output; the job's line is what matters.
    const [, grantId = '', jobGroup = ''] = await running.readUntil('stdout', /ready (\S+) pgrp=(\d+)/);
    t.after(() => killGroup(Number(jobGroup)));
    // `exec` makes jit the leader of the terminal's foreground group, which the job shares.
    await assertHeld(places, grantId, Number(jobGroup));

    running.child.stdin?.write(keys);
    const result = await running.done;

    assert.deepEqual(await received(report), { [signal]: 1 });
    assert.equal(result.code, 23, 'script passes on jit’s exit code, which is the job’s');
    await assertReleased(places, grantId);
  });
}

test('in a terminal that reports no width, jit run neither hangs nor floods it', async (t) => {
  if (!withTerminal(t)) return;
  const places = await setUp(t);
  if (!places) return;
  const running = startJit(t, ['run', '--scope', 'datasets/train', '--', 'node', '-e', 'console.log("job done")'], {
    env: places.env,
    terminal: true,
    terminalColumns: 0,
  });
  const timer = setTimeout(() => running.child.kill('SIGKILL'), 15_000);
  const result = await running.done;
  clearTimeout(timer);
  assert.equal(result.code, 0, `jit did not finish on a 0-column terminal: ${result.stdout.slice(0, 200)}`);
  assert.match(result.stdout, /job done/);
  assert.ok(result.stdoutBytes.length < 1024, `the terminal got ${result.stdoutBytes.length} bytes for one line of output`);
});

test('--kill-after 1s: a job that ignores SIGTERM is SIGKILLed after the grace period; jit exits 137 and revokes', async (t) => {
  const places = await setUp(t);
  if (!places) return;
  const report = await reportFile(t);
  const running = startJit(t, runArgs(job('signal-counter.mjs', report, 'ignore'), ['--kill-after', '1s']), { env: places.env });
  const [, grantId = ''] = await running.readUntil('stdout', /ready (\S+) /);
  await assertHeld(places, grantId, running.child.pid);

  const sentAt = Date.now();
  process.kill(running.child.pid ?? 0, 'SIGTERM');
  const result = await running.done;
  const tookMs = Date.now() - sentAt;

  assert.deepEqual(await received(report), { SIGTERM: 1 });
  assert.equal(result.code, 137);
  assert.ok(tookMs >= 1000, `jit waited the grace period (${tookMs} ms)`);
  assert.ok(tookMs < 5000, `jit did not wait the 10 s default (${tookMs} ms)`);
  await assertReleased(places, grantId);
});

test('heartbeats keep the grant usable past the heartbeat timeout while the job lives', async (t) => {
  const places = await setUp(t, { heartbeatTimeout: '3s' });
  if (!places) return;

  const result = await jit(runArgs(job('read-later.mjs', '5000', GRANTED_FILE)), { env: places.env });

  assert.equal(
    result.stdout,
    `200 ${SAMPLE_FILES['train/shard-0000.jsonl']}`,
    'the job read its data 5 s in, with a 3 s heartbeat timeout',
  );
  assert.equal(result.code, 0);
  assert.equal(result.stderr, '');
});

test('jit SIGKILLed: the broker refuses the credential within the heartbeat timeout and marks the grant expired; the next jit reaps it', async (t) => {
  const places = await setUp(t, { heartbeatTimeout: '3s' });
  if (!places) return;
  const { broker, env, keychain } = places;
  const running = startJit(t, runArgs(job('held-job.mjs')), { env });
  const [, grantId = ''] = await running.readUntil('stdout', /ready (\S+)\n/);
  const credential = await assertHeld(places, grantId, running.child.pid);

  const killedAt = Date.now();
  running.kill('SIGKILL');
  await running.done;
  killGroup(running.child.pid); // the orphaned job; the broker must not need its end to act
  const refused = await waitFor('the broker to refuse the credential', async () => {
    const { status } = await readGranted(broker.url, credential, GRANTED_FILE);
    return status === 200 ? undefined : { status, afterMs: Date.now() - killedAt };
  });
  assert.equal(refused.status, 401);
  // The last heartbeat came at most at the kill, so the deadline is at most 3 s after it; 1 s of slack for polling.
  assert.ok(refused.afterMs <= 4000, `refused ${refused.afterMs} ms after the kill`);
  await waitFor(
    'the grant to be marked expired',
    async () => ((await brokerGrant(broker, grantId)).state === 'expired' ? true : undefined),
    5000,
  );
  assert.equal((await localGrants(env))[grantId]?.state, 'active', 'a SIGKILLed jit could not clean up');
  assert.ok(await keychain.get(accounts.grant(grantId)), 'nor wipe the keychain');

  const later = await jit(['grants'], { env });

  assert.equal(later.code, 0, later.stderr);
  assert.equal(later.stdout, 'No live grants on this machine.\n');
  await assertReleased(places, grantId, 'expired');
});
