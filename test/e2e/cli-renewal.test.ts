// Renewal as a user meets it: `jit run` keeps a long job's grant alive past its TTL by renewing
// it in place (same credential, no restart) up to the policy's max TTL, and says once when that
// max is reached; `jit renew` extends a grant from `jit request` by hand. The real bin/jit, a real
// broker with a 3 s heartbeat timeout (1 s heartbeats), the real OS keychain.
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, type TestContext, test } from 'node:test';
import { createToken, SAMPLE_FILES, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { jit, testEnv } from '../helpers/cli.ts';
import { realKeychain } from '../helpers/keychain.ts';
import { assertReleased, brokerGrant, GRANTED_FILE, localGrants, type Places } from '../helpers/state.ts';
import { job, lines } from './support.ts';

/** Train grants live 6 s and may be renewed for up to an hour; eval grants get 6 s and no more. */
const POLICY = `policy:
  rules:
    - name: train-renewable
      subjects: ["user:ana"]
      scopes: ["datasets/train/**"]
      defaultTtl: 6s
      maxTtl: 1h
    - name: eval-fixed
      subjects: ["user:ana"]
      scopes: ["datasets/eval/**"]
      defaultTtl: 6s
      maxTtl: 6s
`;

const GRANT = /g_[0-9a-f]{20}/;
const ISO = /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/;

/**
 * `jit run --scope SCOPE` of a job that prints its grant id and original expiry, works for 9 s
 * (past the 6 s TTL), then reads FILE and prints the status and body.
 */
function longJob(scope: string, file: string): string[] {
  return [
    'run',
    '--scope',
    scope,
    '--',
    'sh',
    '-c',
    'echo "$JIT_GRANT_ID $JIT_EXPIRES_AT"; exec "$@"',
    'sh',
    ...job('read-later.mjs', '9000', file),
  ];
}

describe('renewal', () => {
  let broker: TestBroker;
  let anaToken: string;

  before(async () => {
    broker = await startTestBroker({ policy: POLICY, heartbeatTimeout: '3s' });
    anaToken = await createToken(broker, 'user:ana', ['requester']);
  });
  after(() => broker.cleanup());

  async function world(t: TestContext): Promise<Places | undefined> {
    const keychain = await realKeychain(t);
    if (!keychain) return undefined;
    const env = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: anaToken, JIT_KEYCHAIN: 'require' });
    t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
    return { broker, env, keychain };
  }

  test('jit run renews a long job’s grant in place, so the job reads its data after the original expiry', async (t) => {
    const places = await world(t);
    if (!places) return;
    const result = await jit(longJob('datasets/train', GRANTED_FILE), { env: places.env });
    const finishedAt = Date.now();

    assert.equal(result.code, 0, result.stderr);
    const [first = '', ...read] = result.stdout.split('\n');
    const [id = '', originalExpiry = ''] = first.split(' ');
    assert.match(id, GRANT);
    assert.equal(read.join('\n'), `200 ${SAMPLE_FILES['train/shard-0000.jsonl']}`, 'the same credential still reads');
    assert.ok(finishedAt > Date.parse(originalExpiry) + 1000, `the read came after the original expiry ${originalExpiry}`);
    assert.equal(result.stderr, '', 'renewal is silent without -v');
    const events = (await broker.broker.grants.events(id)).map((event) => event.type);
    assert.ok(events.includes('grant.renewed'), `the broker recorded a renewal: ${events.join(', ')}`);
    await assertReleased(places, id);
  });

  test('at the policy’s max TTL jit says once that it cannot renew, and the job loses access', async (t) => {
    const places = await world(t);
    if (!places) return;
    const result = await jit(longJob('datasets/eval', 'datasets/eval/holdout.jsonl'), { env: places.env });

    const [first = '', read = ''] = result.stdout.split('\n');
    const [id = ''] = first.split(' ');
    assert.match(id, GRANT);
    assert.match(read, /^401 /, 'the data plane refuses the expired credential');
    assert.doesNotMatch(result.stdout, /secret eval item/);
    assert.equal(result.code, 1, 'jit exits with the job’s code');
    const refusals = lines(result.stderr).filter((line) => line.includes('cannot be renewed'));
    assert.equal(refusals.length, 1, `said once: ${result.stderr}`);
    assert.match(
      refusals[0] ?? '',
      new RegExp(
        `^jit: grant ${id} cannot be renewed \\(.*the end of its policy's max TTL \\(6s from .*\\); the job loses access at ${ISO.source}$`,
      ),
    );
    assert.ok(
      lines(result.stderr).includes(`jit: warning: grant ${id} is expired (ttl): the job's access has ended`),
      `says when access ended: ${result.stderr}`,
    );
    await assertReleased(places, id, 'expired');
  });

  test('jit renew extends a jit request grant and prints the new expiry, up to the max TTL and no further', async (t) => {
    const places = await world(t);
    if (!places) return;
    const requested = await jit(['request', '--scope', 'datasets/train', '--ttl', '10m'], { env: places.env });
    assert.equal(requested.code, 0, requested.stderr);
    const [id = ''] = requested.stdout.match(GRANT) ?? [];
    const activatedAt = Date.parse((await brokerGrant(broker, id)).activatedAt ?? '');

    const before = Date.now();
    const renewed = await jit(['renew', id, '--ttl', '30m'], { env: places.env });
    assert.equal(renewed.code, 0, renewed.stderr);
    const [, expiry = ''] = renewed.stdout.match(new RegExp(`^${id} now expires (${ISO.source})\\n$`)) ?? [];
    assert.ok(expiry, renewed.stdout);
    const ahead = Date.parse(expiry) - before;
    assert.ok(ahead >= 30 * 60_000 - 1000 && ahead <= 30 * 60_000 + 5000, `about 30 minutes from now, got ${ahead} ms`);
    assert.equal((await brokerGrant(broker, id)).expiresAt, expiry);
    assert.equal((await localGrants(places.env))[id]?.expiresAt, expiry, 'the local index shows the new expiry');

    const tooLong = await jit(['renew', id, '--ttl', '2h'], { env: places.env });
    assert.equal(tooLong.code, 2);
    assert.match(tooLong.stderr, /^jit: error: ttl 2h is longer than the 1h the policy allows for this scope; ask for --ttl 1h or less\n$/);

    const toMax = await jit(['renew', id, '--ttl', '1h'], { env: places.env });
    assert.equal(toMax.code, 0, toMax.stderr);
    assert.equal(toMax.stdout, `${id} now expires ${new Date(activatedAt + 3_600_000).toISOString()}\n`, 'capped at 1h from activation');

    const capped = await jit(['renew', id, '--ttl', '1h'], { env: places.env });
    assert.equal(capped.code, 8);
    assert.match(
      capped.stderr,
      new RegExp(`^jit: error: grant ${id} already runs to ${ISO.source}, the end of its policy's max TTL \\(1h from `),
    );
    assert.match(capped.stderr, /; request a new grant to go on after it ends\n$/);

    const revoked = await jit(['revoke', id], { env: places.env });
    assert.equal(revoked.code, 0, revoked.stderr);
    await assertReleased(places, id);
  });
});
