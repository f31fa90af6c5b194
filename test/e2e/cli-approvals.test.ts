// The approval flow as its two people meet it: a requester whose `jit run`, `jit request` and
// `jit run --grant` wait on a scope that needs approval, and an approver who answers with
// `jit approve` / `jit deny` (by id, or picked on a terminal). The real bin/jit for both, one
// real broker, the real OS keychain.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, type TestContext, test } from 'node:test';
import type { GrantView } from '../../src/core/grant.ts';
import { heldCredential } from '../../src/runner/held.ts';
import { accounts } from '../../src/secrets/store.ts';
import { api, createToken, readGranted, SAMPLE_FILES, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { type JitProcess, jit, testEnv } from '../helpers/cli.ts';
import { realKeychain } from '../helpers/keychain.ts';
import { assertReleased, brokerGrant, GRANTED_FILE, localGrants, type Places } from '../helpers/state.ts';
import { job, lines, runArgs, skipWithoutTerminal, startJit } from './support.ts';

/** ana may read train data once one data owner (pat) approves; nobody else is in the policy. */
const POLICY = `policy:
  rules:
    - name: train-needs-an-owner
      subjects: ["user:ana"]
      scopes: ["datasets/train/**"]
      defaultTtl: 1h
      maxTtl: 2h
      approval: { required: true, approvers: ["group:data-owners"], count: 1 }
  groups:
    data-owners: ["user:pat"]
`;

const WHO = 'one of group:data-owners';
const GRANT = /g_[0-9a-f]{20}/;
/** The one line a waiting jit prints on stderr when it has no terminal. */
const WAITING = new RegExp(`jit: grant (${GRANT.source}) is waiting for approval by ([^\\n]+)\\n`);
/** What read-later.mjs prints when the credential read the granted file. */
const READ_OK = `200 ${SAMPLE_FILES['train/shard-0000.jsonl']}`;

/** The requester's world (ana's HOME, config and token) plus the approver's environment (pat's). */
type World = Places & { approver: NodeJS.ProcessEnv; scratch: string };

/**
 * A broker with POLICY, ana's and pat's tokens, started before a describe's tests and removed
 * after them; `world` gives each test its own HOME for ana and for pat on it.
 */
function approvalBroker() {
  const shared = {} as { broker: TestBroker; anaToken: string; patToken: string };
  before(async () => {
    shared.broker = await startTestBroker({ policy: POLICY });
    shared.anaToken = await createToken(shared.broker, 'user:ana', ['requester']);
    shared.patToken = await createToken(shared.broker, 'user:pat', ['approver']);
  });
  after(() => shared.broker.cleanup());

  /** A fresh HOME for ana and one for pat; undefined when the test skipped for want of a keychain. */
  async function world(t: TestContext): Promise<World | undefined> {
    const keychain = await realKeychain(t);
    if (!keychain) return undefined;
    const { broker, anaToken, patToken } = shared;
    const env = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: anaToken, JIT_KEYCHAIN: 'require' });
    const approver = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: patToken, JIT_KEYCHAIN: 'require' });
    const scratch = await mkdtemp(path.join(tmpdir(), 'jit-approvals-'));
    t.after(async () => {
      for (const dir of [env.HOME, approver.HOME, scratch]) await rm(dir ?? '', { recursive: true, force: true });
    });
    return { broker, env, keychain, approver, scratch };
  }
  return { shared, world };
}

/** The id a waiting jit names in its one stderr line, after checking the line names the approvers. */
async function waitingId(running: JitProcess): Promise<string> {
  const [, id = '', who] = await running.readUntil('stderr', WAITING);
  assert.equal(who, WHO, 'the waiting line names who can approve');
  return id;
}

/** `jit request --scope datasets/train` as ana; returns the id it printed. */
async function requestAhead(places: World, reason: string): Promise<string> {
  const requested = await jit(['request', '--scope', 'datasets/train', '--reason', reason], { env: places.env });
  assert.equal(requested.code, 0, requested.stderr);
  const [id] = requested.stdout.match(GRANT) ?? [];
  assert.ok(id, `jit request printed the grant id: ${requested.stdout}`);
  assert.match(requested.stdout, new RegExp(`^${id} is pending: it needs approval by ${WHO} \\(times out `));
  assert.match(requested.stdout, new RegExp(`Once approved, run the job with: jit run --grant ${id} -- COMMAND\\n$`));
  return id;
}

/** Asserts a grant waits: pending on the broker, indexed as pending, its kept credential refused by the data plane. */
async function assertWaiting(places: World, id: string, pid: number | null | undefined): Promise<void> {
  assert.equal((await brokerGrant(places.broker, id)).state, 'pending');
  const local = (await localGrants(places.env))[id];
  assert.equal(local?.state, 'pending', 'the local index lists the request as pending');
  assert.equal(local?.pid, pid);
  const held = await heldCredential(places.keychain, id);
  assert.ok(held, 'the credential waits in the keychain');
  const early = await readGranted(places.broker.url, held.credential, GRANTED_FILE);
  assert.equal(early.status, 401, 'no data before approval');
  assert.match(early.text, /grant_pending/);
}

describe('approvals from the command line', () => {
  const { shared, world } = approvalBroker();

  test('jit run waits, names who can approve, runs the job once `jit approve` lets it, and revokes at exit', async (t) => {
    const places = await world(t);
    if (!places) return;
    const running = startJit(t, runArgs(job('read-later.mjs', '0', GRANTED_FILE), ['--reason', 'nightly fine-tune']), {
      env: places.env,
    });
    const id = await waitingId(running);
    await assertWaiting(places, id, running.child.pid);

    const approved = await jit(['approve', id, '--reason', 'fine by me'], { env: places.approver });
    assert.equal(approved.code, 0, approved.stderr);
    assert.match(approved.stdout, new RegExp(`^${id} approved: user:ana now has datasets/train until \\d{4}-\\d\\d-\\d\\dT`));

    const result = await running.done;
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, READ_OK, 'the job read the file with its credential');
    assert.deepEqual(lines(result.stderr), [`jit: grant ${id} is waiting for approval by ${WHO}`], 'one line, and no noise after it');
    await assertReleased(places, id);
  });

  test('a denial ends a waiting jit run with exit 4 and the reason; the job never starts and nothing is left', async (t) => {
    const places = await world(t);
    if (!places) return;
    const marker = path.join(places.scratch, 'job-ran');
    const running = startJit(t, runArgs(['touch', marker]), { env: places.env });
    const id = await waitingId(running);

    const denied = await jit(['deny', id, '--reason', 'train data is frozen for the audit'], { env: places.approver });
    assert.equal(denied.code, 0, denied.stderr);
    assert.equal(denied.stdout, `${id} denied: user:ana does not get datasets/train\n`);

    const result = await running.done;
    assert.equal(result.code, 4);
    assert.match(result.stderr, new RegExp(`jit: error: grant ${id} was denied by user:pat: train data is frozen for the audit`));
    assert.equal(existsSync(marker), false, 'the job never ran');
    await assertReleased(places, id, 'denied');
  });

  test('--no-wait exits 9 with the id and leaves the request; after approval `jit run --grant` runs the job and revokes it', async (t) => {
    const places = await world(t);
    if (!places) return;
    const result = await jit(runArgs(job('read-later.mjs', '0', GRANTED_FILE), ['--no-wait']), { env: places.env });
    assert.equal(result.code, 9);
    assert.equal(result.stdout, '');
    const [, id = ''] = result.stderr.match(new RegExp(`^jit: error: grant (${GRANT.source}) is waiting for approval by ${WHO}`)) ?? [];
    assert.ok(id, result.stderr);
    assert.match(result.stderr, new RegExp(`once approved, run the job with \`jit run --grant ${id} -- `));
    await assertWaiting(places, id, null);

    assert.equal((await jit(['approve', id], { env: places.approver })).code, 0);
    const ran = await jit(['run', '--grant', id, '--', ...job('read-later.mjs', '0', GRANTED_FILE)], { env: places.env });
    assert.equal(ran.code, 0, ran.stderr);
    assert.equal(ran.stdout, READ_OK);
    assert.equal(ran.stderr, '');
    await assertReleased(places, id);
  });

  test('jit request leaves a request an approver sees in `jit approvals`; `jit run --grant` waits for its approval', async (t) => {
    const places = await world(t);
    if (!places) return;
    const id = await requestAhead(places, 'eval of run 7');
    await assertWaiting(places, id, null);
    assert.equal((await localGrants(places.env))[id]?.command, '(jit request)');
    const early = await jit(['renew', id], { env: places.env });
    assert.equal(early.code, 8);
    assert.match(early.stderr, new RegExp(`^jit: error: grant ${id} is pending; it can be renewed once approved\\n$`));

    const listed = await jit(['approvals'], { env: places.approver });
    assert.equal(listed.code, 0, listed.stderr);
    const [header, row, ...rest] = lines(listed.stdout);
    assert.match(header ?? '', /^ID\s+REQUESTER\s+SCOPES\s+TTL\s+APPROVALS\s+TIMES OUT\s+REASON$/);
    assert.match(row ?? '', new RegExp(`^${id}\\s+user:ana\\s+datasets/train\\s+3600s\\s+0 of 1\\s+\\S+\\s+eval of run 7$`));
    assert.deepEqual(rest, []);
    const asJson = await jit(['approvals', '--json'], { env: places.approver });
    assert.deepEqual(
      (JSON.parse(asJson.stdout) as { grants: GrantView[] }).grants.map((grant) => [grant.id, grant.reason]),
      [[id, 'eval of run 7']],
    );
    const mine = await jit(['approvals'], { env: places.env });
    assert.equal(mine.code, 4, 'a requester is no approver');

    const running = startJit(t, ['run', '--grant', id, '--', ...job('read-later.mjs', '0', GRANTED_FILE)], { env: places.env });
    assert.equal(await waitingId(running), id);
    assert.equal((await jit(['approve', id], { env: places.approver })).code, 0);
    const result = await running.done;
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, READ_OK);
    await assertReleased(places, id);
  });

  for (const [decision, code] of [
    ['approve', 0],
    ['deny', 4],
  ] as const) {
    test(`jit request --wait exits ${code} when the request is ${decision === 'approve' ? 'approved' : 'denied'}`, async (t) => {
      const places = await world(t);
      if (!places) return;
      const waiting = startJit(t, ['request', '--scope', 'datasets/train', '--wait'], { env: places.env });
      const id = await waitingId(waiting);
      const review = await api<GrantView>(places.broker, shared.patToken, 'POST', `grants/${id}/${decision}`, { reason: 'not this week' });
      assert.equal(review.status, 200);

      const result = await waiting.done;
      assert.equal(result.code, code, result.stderr);
      if (decision === 'approve') {
        assert.match(result.stdout, new RegExp(`^${id} is active for datasets/train until \\d{4}-`));
        assert.equal((await localGrants(places.env))[id]?.state, 'active');
        assert.ok(await places.keychain.get(accounts.grant(id)), 'the credential stays for `jit run --grant`');
        const revoked = await jit(['revoke', id], { env: places.env });
        assert.equal(revoked.code, 0, revoked.stderr);
        await assertReleased(places, id);
      } else {
        assert.equal(result.stdout, '');
        assert.match(result.stderr, new RegExp(`jit: error: grant ${id} was denied by user:pat: not this week`));
        await assertReleased(places, id, 'denied');
      }
    });
  }

  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    test(`${signal} to a waiting jit run exits ${code}, cancels the request, and leaves nothing behind`, async (t) => {
      const places = await world(t);
      if (!places) return;
      const marker = path.join(places.scratch, 'job-ran');
      const running = startJit(t, runArgs(['touch', marker]), { env: places.env });
      const id = await waitingId(running);
      await assertWaiting(places, id, running.child.pid);

      process.kill(running.child.pid ?? 0, signal);
      const result = await running.done;
      assert.equal(result.code, code);
      assert.equal(existsSync(marker), false, 'the job never ran');
      await assertReleased(places, id, 'cancelled');
    });
  }

  test('--wait-timeout 2s gives up with exit 9 and cancels the request', async (t) => {
    const places = await world(t);
    if (!places) return;
    const started = Date.now();
    const result = await jit(runArgs(['true'], ['--wait-timeout', '2s']), { env: places.env });
    const tookMs = Date.now() - started;
    assert.equal(result.code, 9);
    const [id = ''] = result.stderr.match(GRANT) ?? [];
    assert.match(result.stderr, new RegExp(`jit: error: no approval for grant ${id} within the wait timeout`));
    assert.ok(tookMs >= 2000 && tookMs < 10_000, `gave up after the 2 s asked for (${tookMs} ms)`);
    await assertReleased(places, id, 'cancelled');
    assert.doesNotMatch(result.stderr, new RegExp(`jit approve ${id}`), 'no approving a request it just cancelled');
    assert.match(result.stderr, /the request is cancelled/);
  });

  test('--no-wait --json: exit 9 and one JSON error on stdout naming the grant id; jit revoke cancels the request', async (t) => {
    const places = await world(t);
    if (!places) return;
    const result = await jit(runArgs(['true'], ['--no-wait', '--json']), { env: places.env });
    assert.equal(result.code, 9);
    assert.equal(result.stderr, '');
    const { error } = JSON.parse(result.stdout) as { error: { code: string; grantId: string; exitCode: number } };
    assert.equal(error.code, 'approval_pending');
    assert.equal(error.exitCode, 9);
    assert.match(error.grantId, GRANT);
    await assertWaiting(places, error.grantId, null);

    const cancelled = await jit(['revoke', error.grantId], { env: places.env });
    assert.equal(cancelled.code, 0, cancelled.stderr);
    await assertReleased(places, error.grantId, 'cancelled');
  });

  test('jit approve with no id and no terminal exits 2 with one line saying what to do', async (t) => {
    const places = await world(t);
    if (!places) return;
    for (const verb of ['approve', 'deny']) {
      const result = await jit([verb, '--reason', 'x'], { env: places.approver });
      assert.equal(result.code, 2);
      assert.equal(result.stdout, '');
      assert.deepEqual(lines(result.stderr), [
        `jit: error: name the grant to ${verb} (no terminal to pick one on, or CI is set); list the requests waiting for you with \`jit approvals\`, then \`jit ${verb} ID\``,
      ]);
    }
  });
});

// Its own broker, so the picker lists each test's request alone (each test ends its own).
describe('the review picker', () => {
  const { world } = approvalBroker();

  test('jit approve with no id on a terminal lists the waiting request in a picker, and Enter approves it', async (t) => {
    if (skipWithoutTerminal(t)) return;
    const places = await world(t);
    if (!places) return;
    const id = await requestAhead(places, 'picker check');
    const picker = startJit(t, ['approve'], { env: places.approver, terminal: true, terminalColumns: 200 });
    await picker.readUntil('stdout', /Which request do you approve\?/);
    await picker.readUntil('stdout', /user:ana wants datasets\/train for 3600s: "picker check"/);
    picker.child.stdin?.write('\r');
    const result = await picker.done;
    assert.equal(result.code, 0, result.stdout);
    assert.match(result.stdout, new RegExp(`${id} approved: user:ana now has datasets/train until `));
    assert.equal((await brokerGrant(places.broker, id)).state, 'active');
    const revoked = await jit(['revoke', id], { env: places.env });
    assert.equal(revoked.code, 0, revoked.stderr);
    await assertReleased(places, id);
  });

  test('jit deny with no id on a terminal: pick the request, give the reason at the prompt, and the requester sees it', async (t) => {
    if (skipWithoutTerminal(t)) return;
    const places = await world(t);
    if (!places) return;
    const waiting = startJit(t, ['request', '--scope', 'datasets/train', '--reason', 'deny picker check', '--wait'], {
      env: places.env,
    });
    const id = await waitingId(waiting);
    const picker = startJit(t, ['deny'], { env: places.approver, terminal: true, terminalColumns: 200 });
    await picker.readUntil('stdout', /Which request do you deny\?/);
    await picker.readUntil('stdout', /user:ana wants datasets\/train for 3600s: "deny picker check"/);
    picker.child.stdin?.write('\r');
    await picker.readUntil('stdout', /Reason \(the requester sees it\)/);
    picker.child.stdin?.write('eval set is under embargo\r');
    const result = await picker.done;
    assert.equal(result.code, 0, result.stdout);
    assert.match(result.stdout, new RegExp(`${id} denied: user:ana does not get datasets/train\r\n$`));

    const requester = await waiting.done;
    assert.equal(requester.code, 4, requester.stderr);
    assert.match(requester.stderr, new RegExp(`jit: error: grant ${id} was denied by user:pat: eval set is under embargo`));
    assert.deepEqual((await brokerGrant(places.broker, id)).approval?.deniedBy, {
      approver: 'user:pat',
      reason: 'eval set is under embargo',
    });
    await assertReleased(places, id, 'denied');
  });

  test('with CI set, jit approve and jit deny with no id refuse in one line naming what to pass, even on a terminal', async (t) => {
    if (skipWithoutTerminal(t)) return;
    const places = await world(t);
    if (!places) return;
    const id = await requestAhead(places, 'not in CI');
    for (const verb of ['approve', 'deny']) {
      const refusing = startJit(t, [verb], { env: { ...places.approver, CI: 'true' }, terminal: true });
      // A picker shown instead would wait for a key: fail in seconds, not at the test's timeout.
      await refusing.readUntil('stdout', /jit: error: .*\r\n/, 10_000);
      const refused = await refusing.done;
      assert.equal(refused.code, 2, refused.stdout);
      assert.equal(
        refused.stdout,
        `jit: error: name the grant to ${verb} (no terminal to pick one on, or CI is set); list the requests waiting for you with \`jit approvals\`, then \`jit ${verb} ID\`\r\n`,
        'one line, and no picker',
      );
    }
    assert.equal((await brokerGrant(places.broker, id)).state, 'pending', 'nothing was decided');
    const cancelled = await jit(['revoke', id], { env: places.env });
    assert.equal(cancelled.code, 0, cancelled.stderr);
    await assertReleased(places, id, 'cancelled');
  });
});
