// The real bin/jit against real brokers on loopback: `jit revoke --all` asks before it ends every
// grant (and refuses to guess without a person to ask), the global --broker picks the broker for
// one command without ever carrying a profile's token to it, and `jit config` shows and edits the
// profiles.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { describe, type TestContext, test } from 'node:test';
import { startTestBroker } from '../helpers/broker.ts';
import { jit, terminalAvailable } from '../helpers/cli.ts';
import { assertReleased, brokerGrant, brokerGrants, localGrants, type Places } from '../helpers/state.ts';
import { setUp, startJit } from './support.ts';

/** Two grants from `jit request`, indexed on this machine and held by no process. */
async function twoGrants(places: Places): Promise<string[]> {
  const ids: string[] = [];
  for (const _ of [1, 2]) {
    const requested = await jit(['request', '--scope', 'datasets/train'], { env: places.env });
    assert.equal(requested.code, 0, requested.stderr);
    ids.push(requested.stdout.match(/^g_[0-9a-f]{20}/)?.[0] ?? '');
  }
  assert.deepEqual(Object.keys(await localGrants(places.env)).sort(), [...ids].sort());
  return ids;
}

async function assertActive(places: Places, ids: string[]): Promise<void> {
  for (const id of ids) assert.equal((await brokerGrant(places.broker, id)).state, 'active', `${id} is still active`);
  assert.deepEqual(Object.keys(await localGrants(places.env)).sort(), [...ids].sort(), 'the index still lists them');
}

async function assertAllReleased(places: Places, ids: string[]): Promise<void> {
  for (const id of ids) await assertReleased(places, id);
}

describe('jit revoke --all asks first', () => {
  test('without a terminal and without --yes: exit 2 in one line naming --yes, nothing revoked; --yes revokes them', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const ids = await twoGrants(places);
    const refused = await jit(['revoke', '--all'], { env: places.env });
    assert.equal(refused.code, 2);
    assert.equal(refused.stdout, '');
    assert.equal(
      refused.stderr,
      'jit: error: revoke --all asks for confirmation and there is no terminal to ask on (or CI is set); pass --yes to revoke every grant without asking\n',
    );
    const json = await jit(['revoke', '--all', '--json'], { env: places.env });
    assert.equal(json.code, 2);
    assert.equal((JSON.parse(json.stdout) as { error: { code: string } }).error.code, 'confirmation_required');
    await assertActive(places, ids);

    const confirmed = await jit(['revoke', '--all', '--yes'], { env: places.env });
    assert.equal(confirmed.code, 0, confirmed.stderr);
    for (const id of ids) assert.match(confirmed.stdout, new RegExp(`^${id}: revoked at `, 'm'));
    await assertAllReleased(places, ids);
  });

  test('on a terminal the prompt names how many grants: n keeps them, y revokes them; CI set means no prompt', async (t) => {
    if (!terminalAvailable()) return t.skip('util-linux script is not installed');
    const places = await setUp(t);
    if (!places) return;
    const ids = await twoGrants(places);

    const inCi = await jit(['revoke', '--all'], { env: { ...places.env, CI: 'true' } });
    assert.equal(inCi.code, 2);
    assert.match(inCi.stderr, /pass --yes/);

    const declined = startJit(t, ['revoke', '--all'], { env: places.env, terminal: true });
    await declined.readUntil('stdout', /Revoke all 2 grants this machine holds\? \(y\/N\)/);
    declined.child.stdin?.write('n\r');
    const kept = await declined.done;
    assert.equal(kept.code, 0, kept.stdout);
    assert.match(kept.stdout, /Nothing revoked; 2 grants kept\./);
    await assertActive(places, ids);

    const accepted = startJit(t, ['revoke', '--all'], { env: places.env, terminal: true });
    await accepted.readUntil('stdout', /Revoke all 2 grants this machine holds\?/);
    accepted.child.stdin?.write('y\r');
    const revoked = await accepted.done;
    assert.equal(revoked.code, 0, revoked.stdout);
    for (const id of ids) assert.match(revoked.stdout, new RegExp(`${id}: revoked at `));
    await assertAllReleased(places, ids);
  });
});

/** An HTTP server on loopback that answers 401 to everything and records each request's headers. */
async function recordingServer(t: TestContext): Promise<{ url: string; seen: IncomingHttpHeaders[] }> {
  const seen: IncomingHttpHeaders[] = [];
  const server = createServer((request, response) => {
    seen.push(request.headers);
    response.writeHead(401, { 'content-type': 'application/json' }).end('{"error":{"code":"unauthenticated","message":"no"}}');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => server.close());
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

/** Logs `places`' env in to its broker under a fresh profile (keychain token), without JIT_* variables. */
async function profileLoggedIn(t: TestContext, places: Places): Promise<{ env: NodeJS.ProcessEnv; profile: string }> {
  const { JIT_BROKER_URL: _url, JIT_TOKEN: _token, ...env } = places.env;
  const profile = `test-${randomBytes(4).toString('hex')}`;
  const login = await jit(['login', '--broker', places.broker.url, '--token-stdin', '--profile', profile], {
    env,
    input: places.broker.token,
  });
  assert.equal(login.code, 0, login.stderr);
  t.after(() => jit(['logout', '--profile', profile], { env }));
  return { env, profile };
}

describe('global --broker', () => {
  test("selects the broker for one command; a profile's token is never sent to it, JIT_TOKEN is", async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const { env, profile } = await profileLoggedIn(t, places);
    const other = await startTestBroker();
    t.after(() => other.cleanup());

    const own = await jit(['whoami', '--json', '--profile', profile, '--broker', `${places.broker.url}/`], { env });
    assert.equal(own.code, 0, own.stderr);
    const ownWho = JSON.parse(own.stdout) as { brokerUrl: string; auth: string };
    assert.deepEqual([ownWho.brokerUrl, ownWho.auth], [places.broker.url, 'profile'], "the profile's own broker gets its token");

    const recorder = await recordingServer(t);
    for (const args of [['whoami'], ['request', '--scope', 'datasets/train']]) {
      const elsewhere = await jit([...args, '--profile', profile, '--broker', recorder.url], { env });
      assert.equal(elsewhere.code, 3, elsewhere.stderr);
      assert.equal(
        elsewhere.stderr,
        `jit: error: not logged in to ${recorder.url}; run \`jit login --broker ${recorder.url}\`, or set JIT_TOKEN for it\n`,
      );
    }
    assert.ok(
      recorder.seen.every((headers) => !JSON.stringify(headers).includes(places.broker.token)),
      "the profile's token never reached the other URL",
    );

    const withEnvToken = await jit(['whoami', '--json', '--profile', profile, '--broker', other.url], {
      env: { ...env, JIT_TOKEN: other.token },
    });
    assert.equal(withEnvToken.code, 0, withEnvToken.stderr);
    const who = JSON.parse(withEnvToken.stdout) as { brokerUrl: string; auth: string };
    assert.deepEqual([who.brokerUrl, who.auth], [other.url, 'env'], '--broker counts as the explicit URL JIT_TOKEN needs');

    const overridesEnv = await jit(['whoami', '--json', '--broker', other.url], {
      env: { ...env, JIT_BROKER_URL: places.broker.url, JIT_TOKEN: other.token },
    });
    assert.equal(overridesEnv.code, 0, overridesEnv.stderr);
    assert.equal((JSON.parse(overridesEnv.stdout) as { brokerUrl: string }).brokerUrl, other.url, '--broker wins over JIT_BROKER_URL');
  });
});

describe('jit config', () => {
  test('path, list, set --default-ttl and use on the profiles jit login made', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const { env, profile } = await profileLoggedIn(t, places);
    const configFile = path.join(env.JIT_CONFIG_DIR ?? '', 'config.json');

    const where = await jit(['config', 'path'], { env });
    assert.equal(where.code, 0, where.stderr);
    assert.equal(where.stdout, `${configFile}\n`);
    assert.deepEqual(JSON.parse((await jit(['config', 'path', '--json'], { env })).stdout), { path: configFile });

    const set = await jit(['config', 'set', '--profile', profile, '--default-ttl', '90m'], { env });
    assert.equal(set.code, 0, set.stderr);
    assert.equal(set.stdout, `Profile ${profile}: default TTL 1h30m.\n`);
    const stored = JSON.parse(await readFile(configFile, 'utf8')) as { profiles: Record<string, { defaultTtl?: string }> };
    assert.equal(stored.profiles[profile]?.defaultTtl, '1h30m');

    const bad = await jit(['config', 'set', '--profile', profile, '--default-ttl', '30'], { env });
    assert.equal(bad.code, 2);
    assert.equal(bad.stderr, 'jit: error: invalid --default-ttl "30"; add a unit, e.g. 30m or 30s\n');
    const missing = await jit(['config', 'set', '--profile', 'nope', '--default-ttl', '1h'], { env });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /^jit: error: no profile "nope"; create it with `jit login --profile nope --broker URL`/);
    const noTtl = await jit(['config', 'set', '--profile', profile], { env });
    assert.equal(noTtl.code, 2);
    assert.match(
      noTtl.stderr,
      /^jit: error: required option '--default-ttl <duration>' not specified; usage: jit config set \[options\]; `jit config set --help` explains each flag\n$/,
    );

    const list = await jit(['config', 'list', '--profile', profile], { env });
    assert.equal(list.code, 0, list.stderr);
    assert.match(
      list.stdout,
      new RegExp(`^ +PROFILE +BROKER +DEFAULT TTL\\n\\* +${profile} +${places.broker.url.replaceAll('.', '\\.')} +1h30m\\n$`),
    );
    const json = await jit(['config', 'list', '--json'], { env });
    assert.deepEqual(JSON.parse(json.stdout), {
      active: 'default',
      profiles: [{ name: profile, brokerUrl: places.broker.url, defaultTtl: '1h30m', active: false }],
    });

    const run = await jit(['run', '--profile', profile, '--scope', 'datasets/train', '--', 'true'], { env });
    assert.equal(run.code, 0, run.stderr);
    const [grant] = await brokerGrants(places.broker);
    assert.equal(grant?.ttlSeconds, 90 * 60, '`jit run` without --ttl asks for the default TTL just set');
    const requested = await jit(['request', '--profile', profile, '--scope', 'datasets/train', '--json'], { env });
    assert.equal(requested.code, 0, requested.stderr);
    assert.equal((JSON.parse(requested.stdout) as { ttlSeconds: number }).ttlSeconds, 90 * 60, '`jit request` too');
    assert.equal((await jit(['revoke', '--all', '--yes', '--profile', profile], { env })).code, 0);

    // `jit config use` makes the profile the one every command takes without --profile or JIT_PROFILE.
    const whoBefore = await jit(['whoami'], { env });
    assert.equal(whoBefore.code, 3, 'the default profile is not logged in');
    const use = await jit(['config', 'use', profile], { env });
    assert.equal(use.code, 0, use.stderr);
    assert.equal(use.stdout, `Profile ${profile} (${places.broker.url}) is now the active one.\n`);
    const whoAfter = await jit(['whoami', '--json'], { env });
    assert.equal(whoAfter.code, 0, whoAfter.stderr);
    assert.equal((JSON.parse(whoAfter.stdout) as { profile: string }).profile, profile);
    assert.equal((JSON.parse((await jit(['config', 'list', '--json'], { env })).stdout) as { active: string }).active, profile);
    const overridden = await jit(['whoami'], { env: { ...env, JIT_PROFILE: 'default' } });
    assert.equal(overridden.code, 3, 'JIT_PROFILE still wins');
    const unknown = await jit(['config', 'use', 'nope'], { env });
    assert.equal(unknown.code, 2);
    assert.equal(unknown.stderr, `jit: error: no profile "nope"; the profiles are: ${profile}\n`);
    // Logging out of the active profile leaves no active profile behind: commands fall back to `default`.
    assert.equal((await jit(['logout', '--profile', profile], { env })).code, 0);
    assert.equal((JSON.parse((await jit(['config', 'list', '--json'], { env })).stdout) as { active: string }).active, 'default');

    const empty = await jit(['config', 'list'], { env: { ...env, JIT_CONFIG_DIR: path.join(env.HOME ?? '', 'empty') } });
    assert.equal(empty.code, 0, empty.stderr);
    assert.match(empty.stdout, /^No profiles in .*config\.json; run `jit login --broker URL` to create one\.\n$/);
  });
});
