// Every command's --json output, as the real bin/jit prints it against a real broker and the real
// OS keychain, parsed with the strict schema docs/cli.md documents for it (src/cli/shapes.ts): a
// field added, renamed or dropped in a handler fails here until the schema and the docs follow.
// Error documents too. One broker for the people's commands, one for a CI job's OIDC identity.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, type TestContext, test } from 'node:test';
import { z } from 'zod';
import { errorDocument, JSON_OUTPUTS } from '../../src/cli/shapes.ts';
import { api, createToken, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { type Finished, jit, testEnv } from '../helpers/cli.ts';
import { realKeychain } from '../helpers/keychain.ts';
import { startTestIssuer, type TestIssuer } from '../helpers/oidc-issuer.ts';
import { startJit } from './support.ts';

/** admin and ana read train data at once; ana's eval data waits for one data owner (pat). */
const POLICY = `policy:
  rules:
    - name: train
      subjects: ["user:admin", "user:ana"]
      scopes: ["datasets/train/**"]
      defaultTtl: 1h
      maxTtl: 2h
    - name: eval-needs-an-owner
      subjects: ["user:ana"]
      scopes: ["datasets/eval/**"]
      defaultTtl: 1h
      maxTtl: 2h
      approval: { required: true, approvers: ["group:data-owners"], count: 1 }
  groups:
    data-owners: ["user:pat"]
`;

/** The documented outputs this file has checked, so the last test can name any left out. */
const checked = new Set<string>();

/** The schema docs/cli.md shows for `invocation` (exactly as src/cli/shapes.ts spells it). */
function documented(invocation: string): z.ZodType {
  const output = Object.values(JSON_OUTPUTS)
    .flat()
    .find((candidate) => candidate.invocation === invocation);
  assert.ok(output, `src/cli/shapes.ts documents no "${invocation}"`);
  checked.add(invocation);
  return output.schema;
}

/** Checks `text` against the schema; on a mismatch the message says which field and shows the text. */
function conforms<T>(schema: z.ZodType, text: string, what: string): T {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    assert.fail(`${what}: stdout is not one JSON document:\n${text}`);
  }
  const result = schema.safeParse(document);
  assert.ok(result.success, `${what} does not match its documented shape:\n${result.error && z.prettifyError(result.error)}\n${text}`);
  return result.data as T;
}

/** The one document `invocation` printed, after checking its exit code. */
function shaped<T = Record<string, unknown>>(result: Finished, invocation: string, exitCode = 0): T {
  assert.equal(result.code, exitCode, `${invocation}: exit ${result.code}\n${result.stderr}${result.stdout}`);
  return conforms<T>(documented(invocation), result.stdout, invocation);
}

/** Every line `invocation` printed (NDJSON), each checked; at least one. */
function shapedLines<T = Record<string, unknown>>(stdout: string, invocation: string): T[] {
  const schema = documented(invocation);
  const lines = stdout.split('\n').filter(Boolean);
  assert.ok(lines.length > 0, `${invocation} printed nothing`);
  return lines.map((line, index) => conforms<T>(schema, line, `${invocation}, line ${index + 1}`));
}

/** The error document a failed command printed on stdout with --json: its code and exit code as expected. */
function failed(result: Finished, exitCode: number, code: string): void {
  assert.equal(result.code, exitCode, result.stderr + result.stdout);
  const document = conforms<z.output<typeof errorDocument>>(errorDocument, result.stdout, 'the error document');
  assert.equal(document.error.code, code);
  assert.equal(document.error.exitCode, exitCode);
}

describe('--json of the commands people run, on one broker', () => {
  const shared = {} as { broker: TestBroker; ana: string; pat: string };
  before(async () => {
    shared.broker = await startTestBroker({ policy: POLICY, extraYaml: 'audit:\n  checkpointEvery: 2\n' });
    shared.ana = await createToken(shared.broker, 'user:ana', ['requester']);
    shared.pat = await createToken(shared.broker, 'user:pat', ['approver']);
  });
  after(() => shared.broker?.cleanup());

  /** A fresh HOME and config dir with `token` for this broker; undefined when there is no keychain here (the test skips). */
  async function home(t: TestContext, token: string | undefined): Promise<NodeJS.ProcessEnv | undefined> {
    if (!(await realKeychain(t))) return undefined;
    const env = await testEnv({ JIT_BROKER_URL: shared.broker.url, JIT_TOKEN: token, JIT_KEYCHAIN: 'require' });
    t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
    return env;
  }

  test('login, whoami, config list, set and path, logout', async (t) => {
    const env = await home(t, undefined);
    if (!env) return;
    const { url } = shared.broker;
    const login = await jit(['login', '--broker', url, '--token-stdin', '--json'], {
      env: { ...env, JIT_BROKER_URL: undefined },
      input: shared.ana,
    });
    assert.equal(shaped<{ subject: string }>(login, 'jit login --json').subject, 'user:ana');
    const profileEnv = { ...env, JIT_BROKER_URL: undefined };
    assert.equal(shaped<{ auth: string }>(await jit(['whoami', '--json'], { env: profileEnv }), 'jit whoami --json').auth, 'profile');
    assert.equal(
      shaped<{ auth: string }>(await jit(['whoami', '--json'], { env: { ...env, JIT_TOKEN: shared.ana } }), 'jit whoami --json').auth,
      'env',
    );
    shaped(await jit(['config', 'set', '--default-ttl', '90m', '--json'], { env: profileEnv }), 'jit config set --json');
    const list = shaped<{ profiles: { defaultTtl: string | null }[] }>(
      await jit(['config', 'list', '--json'], { env: profileEnv }),
      'jit config list --json',
    );
    assert.equal(list.profiles[0]?.defaultTtl, '1h30m');
    shaped(await jit(['config', 'path', '--json'], { env: profileEnv }), 'jit config path --json');
    shaped(await jit(['config', 'use', 'default', '--json'], { env: profileEnv }), 'jit config use NAME --json');
    failed(await jit(['config', 'use', 'nope', '--json'], { env: profileEnv }), 2, 'invalid_request');
    shaped(await jit(['logout', '--json'], { env: profileEnv }), 'jit logout --json');
    failed(await jit(['whoami', '--json'], { env: profileEnv }), 3, 'unauthenticated');
    failed(await jit(['config', 'set', '--default-ttl', '30', '--json'], { env: profileEnv }), 2, 'invalid_duration');
  });

  test('request, approvals, approve, deny, renew, grants (local and remote) and revoke (one, and --all)', async (t) => {
    const env = await home(t, shared.ana);
    const approver = await home(t, shared.pat);
    if (!env || !approver) return;
    const active = shaped<{ id: string; state: string }>(
      await jit(['request', '--scope', 'datasets/train', '--json'], { env }),
      'jit request --json',
    );
    assert.equal(active.state, 'active');
    const toApprove = shaped<{ id: string; state: string }>(
      await jit(['request', '--scope', 'datasets/eval', '--json'], { env }),
      'jit request --json',
    );
    assert.equal(toApprove.state, 'pending');
    const toDeny = shaped<{ id: string }>(await jit(['request', '--scope', 'datasets/eval', '--json'], { env }), 'jit request --json');

    const waiting = shaped<{ grants: { id: string }[] }>(await jit(['approvals', '--json'], { env: approver }), 'jit approvals --json');
    assert.deepEqual(waiting.grants.map((grant) => grant.id).sort(), [toApprove.id, toDeny.id].sort());
    failed(await jit(['approve', toApprove.id, '--json'], { env }), 4, 'forbidden');
    const approved = shaped<{ state: string }>(await jit(['approve', toApprove.id, '--json'], { env: approver }), 'jit approve ID --json');
    assert.equal(approved.state, 'active');
    const denied = shaped<{ state: string }>(
      await jit(['deny', toDeny.id, '--reason', 'not now', '--json'], { env: approver }),
      'jit deny ID --json',
    );
    assert.equal(denied.state, 'denied');

    shaped(await jit(['renew', active.id, '--ttl', '2h', '--json'], { env }), 'jit renew ID --json');
    failed(await jit(['renew', 'xyz', '--json'], { env }), 2, 'invalid_request');
    const local = shaped<{ grants: unknown[] }>(await jit(['grants', '--json'], { env }), 'jit grants --json');
    assert.equal(local.grants.length, 3);
    const remote = shaped<{ grants: unknown[] }>(await jit(['grants', '--remote', '--json'], { env }), 'jit grants --remote --json');
    assert.equal(remote.grants.length, 3);

    assert.equal(shaped<{ state: string }>(await jit(['revoke', active.id, '--json'], { env }), 'jit revoke ID --json').state, 'revoked');
    failed(await jit(['revoke', '--all', '--json'], { env }), 2, 'confirmation_required');
    const all = shaped<{ revoked: unknown[] }>(await jit(['revoke', '--all', '--yes', '--json'], { env }), 'jit revoke --all --yes --json');
    assert.equal(all.revoked.length, 2, 'the approved grant and the denied one, still in the index');
  });

  test('env (--json and --format json), and the error documents of env and run', async (t) => {
    const env = await home(t, shared.ana);
    if (!env) return;
    const variables = shaped<Record<string, string>>(await jit(['env', '--scope', 'datasets/train', '--json'], { env }), 'jit env --json');
    assert.ok(Object.keys(variables).length > 2, 'the grant variables, not just JIT_GRANT_ID and JIT_EXPIRES_AT');
    const formatted = await jit(['env', '--scope', 'datasets/train', '--format', 'json'], { env });
    assert.equal(formatted.code, 0, formatted.stderr);
    conforms(documented('jit env --json'), formatted.stdout, 'jit env --format json');

    const pending = await jit(['env', '--scope', 'datasets/eval', '--json'], { env });
    failed(pending, 9, 'approval_pending');
    assert.match(pending.stdout, /"grantId": "g_[0-9a-f]{20}"/);
    failed(await jit(['run', '--json', '--scope', 'Datasets', '--', 'true'], { env }), 2, 'invalid_scope');
    failed(await jit(['env', '--scope', 'datasets/train', '--json', '--format', 'shell'], { env }), 2, 'invalid_request');
    assert.equal((await jit(['revoke', '--all', '--yes'], { env })).code, 0);
  });

  test('grants --watch --json, local and remote: every line', async (t) => {
    const env = await home(t, shared.ana);
    if (!env) return;
    const localWatch = startJit(t, ['grants', '--watch', '--json', '--interval', '1s'], { env });
    const remoteWatch = startJit(t, ['grants', '--watch', '--remote', '--json', '--interval', '1s'], { env });
    const { id } = JSON.parse((await jit(['request', '--scope', 'datasets/train', '--json'], { env })).stdout) as { id: string };
    await localWatch.readUntil('stdout', new RegExp(`"change":"added","id":"${id}"`));
    await remoteWatch.readUntil('stdout', new RegExp(`"change":"added","id":"${id}"`));
    assert.equal((await jit(['revoke', id], { env })).code, 0);
    await localWatch.readUntil('stdout', new RegExp(`"change":"removed","id":"${id}"`));
    await remoteWatch.readUntil('stdout', new RegExp(`"change":"changed","id":"${id}","state":"revoked"`));
    for (const watch of [localWatch, remoteWatch]) {
      watch.kill('SIGINT');
      assert.equal((await watch.done).code, 0);
    }
    shapedLines(localWatch.stdout.toString(), 'jit grants --watch --json');
    shapedLines(remoteWatch.stdout.toString(), 'jit grants --watch --remote --json');
  });

  test('audit (a page, and jsonl), audit verify (the broker, and an exported copy), and watch', async (t) => {
    const env = await home(t, shared.broker.token);
    const requester = await home(t, shared.ana);
    if (!env || !requester) return;
    const watch = startJit(t, ['watch', '--json', '--from', '0'], { env });
    await watch.readUntil('stderr', /watching http/);
    for (let run = 0; run < 2; run += 1) {
      const { id } = JSON.parse((await jit(['request', '--scope', 'datasets/train', '--json'], { env })).stdout) as { id: string };
      assert.equal((await jit(['revoke', id], { env })).code, 0);
      await watch.readUntil('stdout', new RegExp(`"action":"grant\\.revoked"[^\\n]*"grant":"${id}"`));
    }
    watch.kill('SIGINT');
    assert.equal((await watch.done).code, 0);
    shapedLines(watch.stdout.toString(), 'jit watch --json');

    const page = shaped<{ records: unknown[] }>(await jit(['audit', '--limit', '3', '--json'], { env }), 'jit audit --json');
    assert.equal(page.records.length, 3);
    const formatted = await jit(['audit', '--format', 'json'], { env });
    conforms(documented('jit audit --json'), formatted.stdout, 'jit audit --format json');
    const exported = await jit(['audit', '--format', 'jsonl'], { env });
    assert.equal(exported.code, 0, exported.stderr);
    shapedLines(exported.stdout, 'jit audit --format jsonl');
    failed(await jit(['audit', '--subject', 'user:admin', '--json'], { env: requester }), 4, 'forbidden');

    shaped(await jit(['audit', 'verify', '--json'], { env }), 'jit audit verify --json');
    const dir = await mkdtemp(path.join(tmpdir(), 'jit-shapes-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const copy = path.join(dir, 'audit.jsonl');
    const publicKey = path.join(dir, 'audit.pub');
    await writeFile(copy, exported.stdout);
    await writeFile(publicKey, (await api<{ publicKey: string }>(shared.broker, shared.broker.token, 'GET', 'audit/key')).body.publicKey);
    const offline = { ...env, JIT_BROKER_URL: undefined, JIT_TOKEN: undefined };
    shaped(
      await jit(['audit', 'verify', '--file', copy, '--public-key', publicKey, '--json'], { env: offline }),
      'jit audit verify --file EXPORT --json',
    );
    await writeFile(copy, exported.stdout.replace('"grant.issued"', '"grant.ISSUED"'));
    const edited = await jit(['audit', 'verify', '--file', copy, '--public-key', publicKey, '--json'], { env: offline });
    failed(edited, 10, 'audit_altered');
  });

  test('broker token create, list and revoke, as the admin through the API', async (t) => {
    const env = await home(t, shared.broker.token);
    if (!env) return;
    const created = shaped<{ tokenId: string }>(
      await jit(['broker', 'token', 'create', '--subject', 'user:zed', '--role', 'requester', '--label', 'shapes', '--json'], { env }),
      'jit broker token create --json',
    );
    const list = shaped<{ tokens: { tokenId: string }[] }>(
      await jit(['broker', 'token', 'list', '--json'], { env }),
      'jit broker token list --json',
    );
    assert.ok(list.tokens.some((token) => token.tokenId === created.tokenId));
    shaped(await jit(['broker', 'token', 'revoke', created.tokenId, '--json'], { env }), 'jit broker token revoke ID --json');
    failed(await jit(['broker', 'token', 'revoke', 'not-an-id', '--json'], { env }), 2, 'invalid_request');
    failed(await jit(['broker', 'token', 'create', '--subject', 'user:zed', '--role', 'root', '--json'], { env }), 2, 'invalid_role');
  });

  test('doctor: its exit code agrees with ok', async (t) => {
    const env = await home(t, shared.ana);
    if (!env) return;
    const result = await jit(['doctor', '--json'], { env });
    const report = conforms<{ ok: boolean }>(documented('jit doctor --json'), result.stdout, 'jit doctor --json');
    assert.equal(result.code, report.ok ? 0 : 1, result.stderr);
  });

  test('broker init, start and check-config, policy explain and completion: no broker or login needed', async (t) => {
    const env = await testEnv();
    const dir = await mkdtemp(path.join(tmpdir(), 'jit-shapes-broker-'));
    t.after(async () => {
      await rm(dir, { recursive: true, force: true });
      await rm(env.HOME ?? '', { recursive: true, force: true });
    });
    const brokerDir = path.join(dir, 'b');
    shaped(await jit(['broker', 'init', '--dir', brokerDir, '--json'], { env }), 'jit broker init --json');
    failed(await jit(['broker', 'init', '--dir', brokerDir, '--json'], { env }), 8, 'already_initialised');
    const started = startJit(t, ['broker', 'start', '--dir', brokerDir, '--port', '0', '--json'], { env });
    await started.readUntil('stdout', /\}\n/);
    started.kill('SIGTERM');
    shaped(await started.done, 'jit broker start --json');

    shaped(await jit(['broker', 'check-config', '--dir', shared.broker.dir, '--json'], { env }), 'jit broker check-config --json');
    failed(await jit(['broker', 'check-config', '--dir', path.join(dir, 'nope'), '--json'], { env }), 2, 'config_missing');
    const explain = (...args: string[]) => jit(['policy', 'explain', '--dir', shared.broker.dir, '--json', ...args], { env });
    const allowed = shaped<{ allowed: boolean }>(
      await explain('--subject', 'user:ana', '--scope', 'datasets/eval'),
      'jit policy explain --json',
    );
    assert.equal(allowed.allowed, true);
    const refused = shaped<{ allowed: boolean }>(
      await explain('--subject', 'user:bo', '--scope', 'datasets/train'),
      'jit policy explain --json',
      4,
    );
    assert.equal(refused.allowed, false);
    for (const shell of ['bash', 'zsh', 'fish']) shaped(await jit(['completion', shell, '--json'], { env }), 'jit completion SHELL --json');
    failed(await jit(['completion', 'tcsh', '--json'], { env }), 2, 'usage');
  });
});

describe('--json of a CI job with an OIDC identity', () => {
  let issuer: TestIssuer;
  let broker: TestBroker;
  before(async () => {
    issuer = await startTestIssuer({ audience: 'placeholder' });
    broker = await startTestBroker({
      extraYaml: `oidc:
  issuers:
    - name: github
      issuer: ${issuer.url}
      audience: ["AUDIENCE"]
      subject: "ci:github:{repository}@{ref}"
`,
    });
    // The audience is the broker's own URL, known once it listens: set it and restart on the same port.
    const configFile = path.join(broker.dir, 'broker.yaml');
    await writeFile(configFile, (await readFile(configFile, 'utf8')).replace('"AUDIENCE"', `"${broker.url}"`));
    await broker.stop();
    await broker.restart();
  });
  after(async () => {
    await broker?.cleanup();
    await issuer?.close();
  });

  test('login --oidc and whoami (auth oidc, with the session end)', async (t) => {
    const env = await testEnv({ JIT_BROKER_URL: broker.url, CI: 'true', JIT_OIDC_TOKEN: await issuer.sign({ aud: broker.url }) });
    t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
    shaped(await jit(['login', '--oidc', '--json'], { env }), 'jit login --oidc --json');
    const whoami = shaped<{ auth: string; expiresAt?: string }>(await jit(['whoami', '--json'], { env }), 'jit whoami --json');
    assert.equal(whoami.auth, 'oidc');
    assert.ok(whoami.expiresAt, 'a CI session says when it ends');
    failed(
      await jit(['login', '--oidc', '--json'], { env: { ...env, JIT_OIDC_TOKEN: await issuer.sign({ aud: 'https://elsewhere' }) } }),
      3,
      'oidc_rejected',
    );
  });
});

test('every documented --json output was checked against what jit prints', (t) => {
  // A run without a keychain skips most of the above; then there is nothing to hold it to.
  if (!checked.has('jit request --json')) return t.skip('the keychain tests were skipped');
  const documentedOutputs = Object.values(JSON_OUTPUTS).flatMap((outputs) => outputs.map((output) => output.invocation));
  assert.deepEqual(
    documentedOutputs.filter((invocation) => !checked.has(invocation)),
    [],
  );
});
