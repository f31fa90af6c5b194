// `jit env` as a CI step uses it: the real bin/jit against a real broker and the real OS keychain
// prints a grant's variables in each format, the printed credential reads the granted data, and
// `jit revoke` in the cleanup step ends it everywhere. The quoting of each format is proved by the
// programs that read it back: sh, python-dotenv, JSON.parse, and GitHub's documented $GITHUB_ENV form.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, type TestContext, test } from 'node:test';
import { parseEnv } from 'node:util';
import { githubEnvLines, render, secretValues } from '../../src/cli/commands/env.ts';
import { accounts } from '../../src/secrets/store.ts';
import { readGranted, SAMPLE_FILES } from '../helpers/broker.ts';
import { jit } from '../helpers/cli.ts';
import { assertReleased, brokerGrant, brokerGrants, GRANTED_FILE, localGrants, type Places } from '../helpers/state.ts';
import { setUp } from './support.ts';

/** user:admin (the test broker's token) may read train data, needs pat's approval for eval, and never gets pii. */
const POLICY = `policy:
  groups:
    owners: ["user:pat"]
  rules:
    - name: ci-train
      subjects: ["user:admin"]
      scopes: ["datasets/train/**"]
      defaultTtl: 1h
      maxTtl: 2h
    - name: eval-approved
      subjects: ["user:admin"]
      scopes: ["datasets/eval/**"]
      maxTtl: 2h
      approval: { required: true, approvers: ["group:owners"], count: 1 }
  deny:
    - name: no-pii
      subjects: ["user:admin"]
      scopes: ["datasets/pii/**"]
      reason: PII needs a signed DPA
`;

const GRANT = /^g_[0-9a-f]{20}$/;
const TRAIN = SAMPLE_FILES['train/shard-0000.jsonl'];

/** Values a shell, a dotenv reader or $GITHUB_ENV could get wrong. */
const TRICKY: Record<string, string> = {
  QUOTES: `it's "quoted" ''`,
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${...} that no reader may expand
  DOLLARS: 'a $HOME ${PATH} $(echo no) `echo no` \\$',
  NEWLINES: 'line one\nline two\n\nlast',
  // Not at the very end: python-dotenv's own parser misreads a value ending in a backslash (docs/ci.md).
  BACKSLASHES: 'C:\\temp\\new \\n not a newline \\ end',
  EMPTY: '',
  PERCENT: '100%0A sure',
};

async function scratchDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'jit-env-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs `script` under sh with the variables it evals from `file`. */
function sh(script: string, file: string): string {
  const result = spawnSync('sh', ['-c', script, 'sh', file], { encoding: 'utf8', env: { PATH: process.env.PATH } });
  assert.equal(result.status, 0, result.stderr);
  return result.stdout;
}

/** The variables a POSIX shell gets from `eval "$(cat file)"`, read back NUL-separated. */
function shellEval(file: string, names: string[]): Record<string, string> {
  const print = names.map((name) => `printf '%s\\0' "$${name}"`).join('; ');
  const values = sh(`eval "$(cat "$1")"; ${print}`, file).split('\0').slice(0, -1);
  return Object.fromEntries(names.map((name, index) => [name, values[index] ?? '<unset>']));
}

/** Reads a dotenv file with python-dotenv (what docker compose and most tools agree with); undefined when it is not installed. */
function pythonDotenv(file: string): Record<string, string> | undefined {
  const result = spawnSync(
    'python3',
    ['-c', 'import json, sys; from dotenv import dotenv_values; print(json.dumps(dotenv_values(sys.argv[1], interpolate=False)))', file],
    { encoding: 'utf8' },
  );
  if (result.status !== 0) return undefined;
  return JSON.parse(result.stdout) as Record<string, string>;
}

/**
 * $GITHUB_ENV as the runner reads it: `NAME=value` lines and `NAME<<DELIMITER` ... `DELIMITER`
 * blocks (docs.github.com, workflow commands, "Multiline strings").
 */
function parseGithubEnv(text: string): Record<string, string> {
  const variables: Record<string, string> = {};
  const lines = text.split('\n');
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index] ?? '';
    if (line === '') continue;
    const heredoc = /^([^=<]+)<<(.+)$/.exec(line);
    if (heredoc) {
      const [, name = '', delimiter] = heredoc;
      const end = lines.indexOf(delimiter ?? '', index + 1);
      assert.ok(end > index, `the ${name} block ends with its delimiter`);
      variables[name] = lines.slice(index + 1, end).join('\n');
      index = end;
    } else {
      const equals = line.indexOf('=');
      assert.ok(equals > 0, `"${line}" is NAME=value`);
      variables[line.slice(0, equals)] = line.slice(equals + 1);
    }
  }
  return variables;
}

/** Requests datasets/train with `jit env ARGS`, asserts it succeeded without a word on stderr, and returns stdout. */
async function envOk(places: Places, args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<string> {
  const result = await jit(['env', '--scope', 'datasets/train', ...args], { env: { ...places.env, ...extraEnv } });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, '', 'nothing on stderr, where CI logs would show it');
  return result.stdout;
}

/** The credential reads the granted file; then `jit revoke ID` ends the grant in all three places and the credential stops working. */
async function assertUsableThenRevoked(places: Places, grantId: string, credential: string): Promise<void> {
  assert.match(grantId, GRANT);
  const read = await readGranted(places.broker.url, credential, GRANTED_FILE);
  assert.deepEqual(read, { status: 200, text: TRAIN }, 'the printed credential reads the granted file');
  assert.equal((await brokerGrant(places.broker, grantId)).state, 'active');
  assert.ok(await places.keychain.get(accounts.grant(grantId)), 'the credential is kept in the keychain, as jit request keeps it');
  const local = (await localGrants(places.env))[grantId];
  assert.equal(local?.state, 'active');
  assert.equal(local?.pid, null, 'no process holds it');

  const revoked = await jit(['revoke', grantId], { env: places.env });
  assert.equal(revoked.code, 0, revoked.stderr);
  await assertReleased(places, grantId);
  assert.notEqual((await readGranted(places.broker.url, credential, GRANTED_FILE)).status, 200, 'the credential no longer reads');
}

describe('jit env prints a live grant in the format a CI step reads', () => {
  test('shell: `export NAME=...` lines a POSIX shell evals into the grant variables', async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const dir = await scratchDir(t);
    const stdout = await envOk(places, ['--ttl', '10m', '--reason', 'nightly eval']);
    for (const line of stdout.trimEnd().split('\n')) assert.match(line, /^export [A-Z_][A-Z0-9_]*='[^']*'$/);
    const file = path.join(dir, 'env.sh');
    await writeFile(file, stdout);
    // The exact invocation docs/ci.md gives GitLab CI.
    const grantId = sh('eval "$(cat "$1")"; printf %s "$JIT_GRANT_ID"', file);
    const seen = shellEval(file, ['JIT_FILES_TOKEN', 'JIT_EXPIRES_AT', 'AWS_SESSION_TOKEN']);
    assert.equal(seen.AWS_SESSION_TOKEN, seen.JIT_FILES_TOKEN);
    const grant = await brokerGrant(places.broker, grantId);
    assert.equal(seen.JIT_EXPIRES_AT, grant.expiresAt);
    assert.equal(grant.reason, 'nightly eval');
    assert.ok(Date.parse(grant.expiresAt ?? '') - Date.now() <= 10 * 60_000, '--ttl applies');
    await assertUsableThenRevoked(places, grantId, seen.JIT_FILES_TOKEN ?? '');
  });

  test('dotenv: NAME="value" lines that python-dotenv and node read back', async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const dir = await scratchDir(t);
    const stdout = await envOk(places, ['--format', 'dotenv']);
    for (const line of stdout.trimEnd().split('\n')) assert.match(line, /^[A-Z_][A-Z0-9_]*=".*"$/);
    const variables = parseEnv(stdout);
    const file = path.join(dir, '.env');
    await writeFile(file, stdout);
    const python = pythonDotenv(file);
    if (python) assert.deepEqual(python, variables, 'python-dotenv reads what node reads');
    await assertUsableThenRevoked(places, variables.JIT_GRANT_ID ?? '', variables.JIT_FILES_TOKEN ?? '');
  });

  test('json: one object of the variables; --json means the same, and contradicts any other --format', async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const variables = JSON.parse(await envOk(places, ['--format', 'json'])) as Record<string, string>;
    for (const value of Object.values(variables)) assert.equal(typeof value, 'string');
    assert.ok('AWS_SECRET_ACCESS_KEY' in variables && 'JIT_EXPIRES_AT' in variables);
    await assertUsableThenRevoked(places, variables.JIT_GRANT_ID ?? '', variables.JIT_FILES_TOKEN ?? '');

    const viaJson = JSON.parse(await envOk(places, ['--json'])) as Record<string, string>;
    assert.deepEqual(Object.keys(viaJson), Object.keys(variables));
    await assertUsableThenRevoked(places, viaJson.JIT_GRANT_ID ?? '', viaJson.JIT_FILES_TOKEN ?? '');

    const clash = await jit(['env', '--scope', 'datasets/train', '--json', '--format', 'shell'], { env: places.env });
    assert.equal(clash.code, 2);
    assert.match(JSON.parse(clash.stdout).error.message, /--json prints the variables as JSON, which contradicts --format shell/);
    assert.deepEqual(await brokerGrants(places.broker).then((grants) => grants.filter((grant) => grant.state === 'active')), []);
  });

  test('github: masks every secret first, then appends the variables to $GITHUB_ENV', async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const dir = await scratchDir(t);
    const githubEnv = path.join(dir, 'github_env');
    await writeFile(githubEnv, 'EARLIER_STEP=kept\n');
    const stdout = await envOk(places, ['--format', 'github'], { GITHUB_ENV: githubEnv });

    const written = parseGithubEnv(await readFile(githubEnv, 'utf8'));
    assert.equal(written.EARLIER_STEP, 'kept', 'appends, never overwrites');
    const grantId = written.JIT_GRANT_ID ?? '';
    const credential = written.JIT_FILES_TOKEN ?? '';
    const lines = stdout.trimEnd().split('\n');
    const masks = lines.filter((line) => line.startsWith('::add-mask::'));
    assert.deepEqual(lines.slice(0, masks.length), masks, 'the masks come before anything else');
    const masked = new Set(masks.map((line) => line.slice('::add-mask::'.length)));
    for (const name of ['JIT_FILES_TOKEN', 'AWS_SESSION_TOKEN', 'AWS_SECRET_ACCESS_KEY', 'AWS_ACCESS_KEY_ID'])
      assert.ok(masked.has(written[name] ?? '<unset>'), `${name} is masked`);
    assert.ok(!masked.has(grantId) && !masked.has(written.AWS_REGION ?? ''), 'ids and regions stay readable in the log');
    // The count is everything in the file but the earlier step's line.
    assert.deepEqual(lines.slice(masks.length), [
      `${grantId} is active until ${written.JIT_EXPIRES_AT}; wrote ${Object.keys(written).length - 1} variables to $GITHUB_ENV`,
    ]);
    for (const line of lines.slice(masks.length)) assert.ok(!line.includes(credential), 'only mask lines carry a secret');
    await assertUsableThenRevoked(places, grantId, credential);
  });
});

test('on a CI runner without a keychain (JIT_KEYCHAIN=memory), `jit revoke --all` in the cleanup step still ends the grant', async (t) => {
  const places = await setUp(t, { policy: POLICY });
  if (!places) return;
  const runner = { ...places.env, JIT_KEYCHAIN: 'memory' };
  const variables = JSON.parse(await envOk(places, ['--format', 'json'], runner)) as Record<string, string>;
  const grantId = variables.JIT_GRANT_ID ?? '';
  assert.equal((await readGranted(places.broker.url, variables.JIT_FILES_TOKEN ?? '', GRANTED_FILE)).status, 200);
  assert.deepEqual(Object.keys(await localGrants(places.env)), [grantId], 'the index outlives the step');
  const cleanup = await jit(['revoke', '--all', '--yes'], { env: runner });
  assert.equal(cleanup.code, 0, cleanup.stderr);
  assert.match(cleanup.stdout, new RegExp(`^${grantId}: revoked at ${(await brokerGrant(places.broker, grantId)).endedAt}`));
  await assertReleased(places, grantId);
});

describe('jit env leaves nothing behind when it cannot print a grant', () => {
  test('--format github without $GITHUB_ENV: exit 2 in one line, no grant requested', async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const result = await jit(['env', '--scope', 'datasets/train', '--format', 'github'], { env: places.env });
    assert.equal(result.code, 2);
    assert.equal(result.stdout, '');
    assert.match(result.stderr, /^jit: error: --format github needs \$GITHUB_ENV, which GitHub Actions sets in every step; [^\n]+\n$/);
    assert.deepEqual(await brokerGrants(places.broker), []);
    assert.deepEqual(await localGrants(places.env), {});
  });

  test('a refused scope: exit 4, nothing printed, nothing on the broker, in the keychain or the index', async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const result = await jit(['env', '--scope', 'datasets/pii'], { env: places.env });
    assert.equal(result.code, 4, result.stderr);
    assert.equal(result.stdout, '', 'no variables for eval to pick up');
    assert.match(result.stderr, /no-pii/);
    assert.deepEqual(
      (await brokerGrants(places.broker)).filter((grant) => grant.state === 'active' || grant.state === 'pending'),
      [],
    );
    assert.deepEqual(await localGrants(places.env), {});
  });

  test('a scope that needs approval, without --wait: exit 9, no variables, and the cleanup step cancels it', async (t) => {
    const places = await setUp(t, { policy: POLICY });
    if (!places) return;
    const result = await jit(['env', '--scope', 'datasets/eval'], { env: places.env });
    assert.equal(result.code, 9, result.stderr);
    assert.equal(result.stdout, '');
    const [grantId] = Object.keys(await localGrants(places.env));
    assert.ok(grantId, 'the pending request is indexed for the cleanup step');
    assert.match(result.stderr, new RegExp(`^jit: error: grant ${grantId} needs approval by [^;]+; no variables printed; pass --wait`));
    const cleanup = await jit(['revoke', '--all', '--yes'], { env: places.env });
    assert.equal(cleanup.code, 0, cleanup.stderr);
    await assertReleased(places, grantId, 'cancelled');
  });
});

describe("each format's quoting survives the values that break naive quoting", () => {
  const names = Object.keys(TRICKY);

  test('shell', async (t) => {
    const file = path.join(await scratchDir(t), 'env.sh');
    await writeFile(file, render('shell', TRICKY));
    assert.deepEqual(shellEval(file, names), TRICKY);
  });

  test('dotenv (python-dotenv)', async (t) => {
    const file = path.join(await scratchDir(t), '.env');
    await writeFile(file, render('dotenv', TRICKY));
    const python = pythonDotenv(file);
    if (!python) return t.skip('python3 with python-dotenv is not installed');
    assert.deepEqual(python, TRICKY);
  });

  test('json', () => {
    assert.deepEqual(JSON.parse(render('json', TRICKY)), TRICKY);
  });

  test('github: the heredoc form for multi-line values, with a delimiter the value does not contain', () => {
    const text = githubEnvLines(TRICKY);
    assert.deepEqual(parseGithubEnv(text), TRICKY);
    assert.match(text, /^NEWLINES<<ghadelimiter_[0-9a-f-]{36}$/m);
    assert.match(text, /^QUOTES=it's "quoted" ''$/m);
  });

  test('github masks: the credential, secret-named values and values embedding them', () => {
    const variables = {
      PGPASSWORD: 'pw123456',
      DATABASE_URL: 'postgresql://u:pw123456@db:5432/x',
      PGHOST: 'db',
      AWS_SESSION_TOKEN: 'cred',
    };
    assert.deepEqual(secretValues(variables, 'cred').sort(), ['cred', 'postgresql://u:pw123456@db:5432/x', 'pw123456']);
  });
});
