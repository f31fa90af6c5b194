import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { GrantView } from '../../src/core/grant.ts';
import { openSecretStore, type SecretStore } from '../../src/secrets/store.ts';
import { api, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { jit, terminalAvailable, testEnv } from '../helpers/cli.ts';
import { startTestIssuer, type TestIssuer } from '../helpers/oidc-issuer.ts';
import { waitFor } from '../helpers/state.ts';
import { job, startJit } from './support.ts';

/**
 * The real bin/jit in a CI job that holds no jit token at all: only the CI system's OIDC identity,
 * from a local issuer this test starts and a FAKE of GitHub Actions' token request endpoint
 * (which only exists on a GitHub runner). The broker's audience is its own URL, the default the
 * CLI asks GitHub for.
 */
const SUBJECT = 'ci:github:acme/train-pipeline@refs/heads/main';
/** A second audience the broker accepts, for JIT_OIDC_AUDIENCE. */
const EXTRA_AUDIENCE = 'https://jit-audience.test';

/** The OS keychain when one is reachable here; undefined on a headless machine (nothing to look into). */
async function keychainIfAny(): Promise<SecretStore | undefined> {
  return openSecretStore('require').catch(() => undefined);
}

describe('jit in a CI job with an OIDC identity and no stored jit token', () => {
  let issuer: TestIssuer;
  let broker: TestBroker;
  let ciEnv: NodeJS.ProcessEnv;

  before(async () => {
    issuer = await startTestIssuer({ audience: 'placeholder' });
    broker = await startTestBroker({
      policy: `policy:
  rules:
    - name: admin-datasets
      subjects: ["user:admin"]
      scopes: ["datasets/**"]
      maxTtl: 8h
    - name: train-pipeline-main
      claims: { repository: "acme/train-pipeline", ref: "refs/heads/main" }
      scopes: ["datasets/train/**"]
      maxTtl: 2h
    - name: train-pipeline-eval
      claims: { repository: "acme/train-pipeline", ref: "refs/heads/main" }
      scopes: ["datasets/eval/**"]
      maxTtl: 1h
      approval: { required: true, approvers: ["user:admin"], count: 1 }
`,
      extraYaml: `oidc:
  issuers:
    - name: github
      issuer: ${issuer.url}
      audience: ["AUDIENCE", "${EXTRA_AUDIENCE}"]
      subject: "ci:github:{repository}@{ref}"
`,
    });
    // The audience is the broker's own URL, known once it listens: set it and restart on the same port.
    const configFile = path.join(broker.dir, 'broker.yaml');
    await writeFile(configFile, (await readFile(configFile, 'utf8')).replace('"AUDIENCE"', `"${broker.url}"`));
    await broker.stop();
    await broker.restart();
    ciEnv = await testEnv({
      JIT_BROKER_URL: broker.url,
      CI: 'true',
      ACTIONS_ID_TOKEN_REQUEST_URL: issuer.github.requestUrl,
      ACTIONS_ID_TOKEN_REQUEST_TOKEN: issuer.github.requestToken,
      DBUS_SESSION_BUS_ADDRESS: undefined,
    });
  });
  after(async () => {
    await broker?.cleanup();
    await issuer?.close();
    if (ciEnv?.HOME) await rm(ciEnv.HOME, { recursive: true, force: true });
  });

  const grantsOnBroker = async () =>
    (await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants?all=true')).body.grants.filter(
      (grant) => grant.subject === SUBJECT,
    );

  it('jit run gets a grant through the GitHub Actions token request, with nothing in the keychain or the config', async () => {
    const before = (await grantsOnBroker()).length;
    const run = await jit(['run', '--scope', 'datasets/train', '--', ...job('env-probe.mjs')], { env: ciEnv });
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stderr, '', 'no keychain warning: in OIDC mode jit does not look for one');
    const report = JSON.parse(run.stdout) as { env: Record<string, string>; train: { status: number }; eval: { status: number } };
    assert.equal(report.train.status, 200, 'the job read its granted data');
    assert.equal(report.eval.status, 403, 'and nothing else');
    assert.equal(report.env.ACTIONS_ID_TOKEN_REQUEST_TOKEN, ciEnv.ACTIONS_ID_TOKEN_REQUEST_TOKEN, 'the job keeps its own CI environment');
    assert.equal(report.env.JIT_TOKEN, undefined);
    assert.deepEqual(issuer.github.audiences.at(-1), broker.url, "jit asked GitHub for a token for the broker's URL");

    const grants = await grantsOnBroker();
    assert.equal(grants.length, before + 1);
    const grant = grants.find((candidate) => candidate.id === report.env.JIT_GRANT_ID);
    assert.equal(grant?.state, 'revoked', 'revoked when the job ended, with the same session');

    const config = await readFile(path.join(ciEnv.JIT_CONFIG_DIR ?? '', 'config.json'), 'utf8').catch(() => '');
    assert.ok(!config.includes('jits_') && !config.includes('eyJ'), 'no session and no OIDC token in the config file');
  });

  it('jit env with a token in JIT_OIDC_TOKEN (GitLab style) keeps nothing in the keychain, and a later jit revoke exchanges again', async () => {
    const token = await issuer.sign({ aud: broker.url });
    const env: NodeJS.ProcessEnv = {
      ...ciEnv,
      ACTIONS_ID_TOKEN_REQUEST_URL: undefined,
      ACTIONS_ID_TOKEN_REQUEST_TOKEN: undefined,
      JIT_OIDC_TOKEN: token,
    };
    const printed = await jit(['env', '--scope', 'datasets/train', '--ttl', '10m', '--format', 'json'], { env });
    assert.equal(printed.code, 0, printed.stderr);
    const vars = JSON.parse(printed.stdout) as Record<string, string>;
    const id = vars.JIT_GRANT_ID ?? '';
    assert.match(id, /^g_/);
    assert.equal((await grantsOnBroker()).find((grant) => grant.id === id)?.state, 'active');
    const keychain = await keychainIfAny();
    if (keychain) {
      assert.equal(await keychain.get(`grant:${id}`), undefined, 'no grant credential in the keychain');
      assert.equal(await keychain.get('token:default'), undefined, 'no token in the keychain');
    }
    const config = await readFile(path.join(env.JIT_CONFIG_DIR ?? '', 'config.json'), 'utf8');
    assert.ok(!config.includes(token) && !config.includes(vars.JIT_FILES_TOKEN ?? 'none'), 'no secret in the index');
    assert.match(config, /"auth": ?"oidc"/);

    const revoked = await jit(['revoke', '--all', '--yes'], { env });
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.equal((await grantsOnBroker()).find((grant) => grant.id === id)?.state, 'revoked');
  });

  it('jit login --oidc shows the identity the broker sees and stores nothing', async () => {
    const login = await jit(['login', '--oidc', '--json'], { env: ciEnv });
    assert.equal(login.code, 0, login.stderr);
    const shown = JSON.parse(login.stdout) as Record<string, unknown>;
    assert.equal(shown.subject, SUBJECT);
    assert.equal(shown.source, 'github-actions');
    assert.equal(shown.stored, false);
    assert.ok(!login.stdout.includes('jits_'), 'the session bearer is not printed');
    const whoami = await jit(['whoami'], { env: ciEnv });
    assert.equal(whoami.code, 0, whoami.stderr);
    assert.match(whoami.stdout, new RegExp(`subject +${SUBJECT.replaceAll('/', '\\/')}`));
    assert.match(whoami.stdout, /session ends/);
  });

  it('jit doctor checks the CI identity: the subject the broker sees, and where the token came from', async () => {
    const doctor = await jit(['doctor', '--json'], { env: ciEnv });
    const report = JSON.parse(doctor.stdout) as { checks: { name: string; status: string; detail: string }[] };
    const auth = report.checks.find((check) => check.name === 'auth');
    assert.equal(auth?.status, 'pass', doctor.stdout);
    assert.equal(auth?.detail, `authenticated as ${SUBJECT} (CI OIDC identity, GitHub Actions)`);
  });

  it('a refused token is one line naming the reason, exit 3, and never echoed', async () => {
    const token = await issuer.sign({ aud: 'https://someone-else.test' });
    const env: NodeJS.ProcessEnv = { ...ciEnv, ACTIONS_ID_TOKEN_REQUEST_URL: undefined, JIT_OIDC_TOKEN: token };
    const run = await jit(['run', '--scope', 'datasets/train', '--', 'true'], { env });
    assert.equal(run.code, 3);
    assert.match(
      run.stderr,
      /^jit: error: the CI identity token was refused: the token's audience is not http:\/\/127\.0\.0\.1:\d+ or https:\/\/jit-audience\.test; check the job's audience/,
    );
    assert.equal(run.stderr.split('\n').filter(Boolean).length, 1);
    assert.ok(!run.stderr.includes(token.split('.')[2] ?? 'x'));
  });

  it('jit env waits for an approval by itself (its credential cannot outlive it), then prints the variables', async (t) => {
    const waiting = startJit(t, ['env', '--scope', 'datasets/eval', '--ttl', '10m', '--format', 'json', '--wait-timeout', '60s'], {
      env: ciEnv,
    });
    const pending = await waitFor('the pending request on the broker', async () =>
      (await grantsOnBroker()).find((grant) => grant.state === 'pending' && grant.scopes.includes('datasets/eval')),
    );
    assert.equal(waiting.child.exitCode, null, 'still waiting, not exit 9');
    const approved = await api(broker, broker.token, 'POST', `grants/${pending.id}/approve`, {});
    assert.equal(approved.status, 200);
    const printed = await waiting.done;
    assert.equal(printed.code, 0, printed.stderr);
    const vars = JSON.parse(printed.stdout) as Record<string, string>;
    assert.equal(vars.JIT_GRANT_ID, pending.id);
    assert.equal((await grantsOnBroker()).find((grant) => grant.id === pending.id)?.state, 'active');
    const revoked = await jit(['revoke', pending.id], { env: ciEnv });
    assert.equal(revoked.code, 0, revoked.stderr);
  });

  it('jit request and jit run --no-wait refuse at once, exit 2, before any grant: its credential would be lost at exit', async () => {
    const before = (await grantsOnBroker()).length;
    const asked = issuer.github.audiences.length;
    for (const [args, command] of [
      [['request', '--scope', 'datasets/train'], 'jit request'],
      [['run', '--no-wait', '--scope', 'datasets/train', '--', 'true'], 'jit run --no-wait'],
    ] as const) {
      const result = await jit([...args], { env: ciEnv });
      assert.equal(result.code, 2, result.stderr);
      assert.equal(result.stdout, '');
      assert.equal(
        result.stderr,
        `jit: error: ${command} cannot leave a grant for a later step with a CI OIDC identity: its credential would exist in this process only; use \`jit run --scope SCOPE -- COMMAND\`, which waits for approval holding the grant, or \`jit env\` to give its variables to later steps (docs/ci.md#oidc-no-stored-secret)\n`,
      );
    }
    assert.equal((await grantsOnBroker()).length, before, 'no grant left on the broker');
    assert.equal(issuer.github.audiences.length, asked, 'not even a token was asked for');
  });

  it('keeps grant credentials out of the keychain even with JIT_KEYCHAIN=require, and says so once with -v', async () => {
    const keychain = await keychainIfAny();
    // The D-Bus session (and so the keychain) that ciEnv hides, back in reach.
    const env: NodeJS.ProcessEnv = { ...ciEnv, DBUS_SESSION_BUS_ADDRESS: process.env.DBUS_SESSION_BUS_ADDRESS, JIT_KEYCHAIN: 'require' };
    const printed = await jit(['-v', 'env', '--scope', 'datasets/train', '--ttl', '10m', '--format', 'json'], { env });
    assert.equal(printed.code, 0, printed.stderr);
    const id = (JSON.parse(printed.stdout) as Record<string, string>).JIT_GRANT_ID ?? '';
    assert.match(id, /^g_/);
    const notes = printed.stderr.match(/grant credentials stay in this process's memory \(--keychain require does not apply\)/g);
    assert.equal(notes?.length, 1, printed.stderr);
    if (keychain) assert.equal(await keychain.get(`grant:${id}`), undefined, 'no grant credential in the keychain');
    const quiet = await jit(['whoami'], { env });
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(quiet.stderr, '', 'nothing said without -v');
    const revoked = await jit(['revoke', '--all', '--yes'], { env });
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.equal((await grantsOnBroker()).find((grant) => grant.id === id)?.state, 'revoked');
  });

  it('reads the token from JIT_OIDC_TOKEN_FILE, and names the file when it cannot', async () => {
    const file = path.join(ciEnv.HOME ?? '', 'oidc-token');
    await writeFile(file, `${await issuer.sign({ aud: broker.url })}\n`, { mode: 0o600 });
    const asked = issuer.github.audiences.length;
    const env: NodeJS.ProcessEnv = { ...ciEnv, JIT_OIDC_TOKEN_FILE: file };
    const whoami = await jit(['whoami', '--json'], { env });
    assert.equal(whoami.code, 0, whoami.stderr);
    assert.equal((JSON.parse(whoami.stdout) as { subject: string }).subject, SUBJECT);
    assert.equal(issuer.github.audiences.length, asked, 'the file wins over GitHub Actions');
    const missing = await jit(['whoami'], { env: { ...env, JIT_OIDC_TOKEN_FILE: `${file}.missing` } });
    assert.equal(missing.code, 2);
    assert.equal(
      missing.stderr,
      `jit: error: cannot read JIT_OIDC_TOKEN_FILE ${file}.missing (ENOENT); point it at the file the CI system writes the job's OIDC token to\n`,
    );
    await writeFile(file, '\n');
    const empty = await jit(['whoami'], { env });
    assert.equal(empty.code, 2);
    assert.equal(empty.stderr, `jit: error: JIT_OIDC_TOKEN_FILE ${file} is empty; point it at the file holding the job's OIDC token\n`);
  });

  it('JIT_OIDC=off ignores every token source: with no JIT_TOKEN the job is not logged in, and GitHub is not asked', async () => {
    const asked = issuer.github.audiences.length;
    const env: NodeJS.ProcessEnv = { ...ciEnv, JIT_OIDC: 'off', JIT_OIDC_TOKEN: await issuer.sign({ aud: broker.url }) };
    const whoami = await jit(['whoami'], { env });
    assert.equal(whoami.code, 3, whoami.stderr);
    assert.match(whoami.stderr, /^jit: error: not logged in to http:\/\/127\.0\.0\.1:\d+; run `jit login --broker/);
    assert.equal(issuer.github.audiences.length, asked);
  });

  it('asks GitHub for the audience in JIT_OIDC_AUDIENCE instead of the broker URL', async () => {
    const ok = await jit(['whoami', '--json'], { env: { ...ciEnv, JIT_OIDC_AUDIENCE: EXTRA_AUDIENCE } });
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal((JSON.parse(ok.stdout) as { subject: string }).subject, SUBJECT);
    assert.equal(issuer.github.audiences.at(-1), EXTRA_AUDIENCE);
    const wrong = await jit(['whoami'], { env: { ...ciEnv, JIT_OIDC_AUDIENCE: 'https://elsewhere.test' } });
    assert.equal(wrong.code, 3);
    assert.match(wrong.stderr, /^jit: error: the CI identity token was refused: the token's audience is not /);
    assert.equal(issuer.github.audiences.at(-1), 'https://elsewhere.test');
  });
});

describe('jit broker check-config with several OIDC issuers', () => {
  it('refuses an allow rule on claims that does not name its issuer, at file:line:key, exit 2', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'jit-oidc-config-'));
    const env = await testEnv();
    try {
      await mkdir(path.join(dir, 'data'));
      const file = path.join(dir, 'broker.yaml');
      const yaml = `version: 1
resources:
  datasets: { kind: files, root: data }
oidc:
  issuers:
    - { name: github, issuer: "https://token.actions.githubusercontent.com", audience: jit, claims: { repository_owner: acme } }
    - { name: gitlab, issuer: "https://gitlab.com", audience: jit, claims: { namespace_path: acme } }
policy:
  rules:
    - name: train-main
      claims: { repository: acme/train-pipeline, ref: refs/heads/main }
      scopes: ["datasets/train/**"]
      maxTtl: 1h
`;
      await writeFile(file, yaml);
      const refused = await jit(['broker', 'check-config', '--dir', dir], { env });
      assert.equal(refused.code, 2);
      assert.equal(refused.stdout, '');
      assert.match(
        refused.stderr,
        /^jit: error: .*broker\.yaml:11: policy\.rules\.0\.claims: broker\.yaml trusts 2 OIDC issuers, so a rule that matches claims names its issuer: add iss: "https:\/\/token\.actions\.githubusercontent\.com"/,
      );
      await writeFile(file, yaml.replace('claims: { repository: acme', 'claims: { iss: "https://gitlab.com", repository: acme'));
      const fixed = await jit(['broker', 'check-config', '--dir', dir], { env });
      assert.equal(fixed.code, 0, fixed.stderr);
    } finally {
      await rm(dir, { recursive: true, force: true });
      await rm(env.HOME ?? '', { recursive: true, force: true });
    }
  });
});

describe('jit login asks for the broker URL only when a person is at a terminal', () => {
  it('without a terminal, or with CI set, it names the flag instead of prompting', async () => {
    const env = await testEnv();
    try {
      for (const extra of [{}, { CI: 'true' }]) {
        const login = await jit(['login'], { env: { ...env, ...extra } });
        assert.equal(login.code, 2);
        assert.match(login.stderr, /^jit: error: no broker URL given, and no terminal to ask on \(or CI is set\); pass --broker URL/);
      }
    } finally {
      await rm(env.HOME ?? '', { recursive: true, force: true });
    }
  });

  it('on a terminal it asks for the URL, then for the token', async (t) => {
    if (!terminalAvailable()) return t.skip('util-linux script is not installed');
    const broker = await startTestBroker();
    t.after(() => broker.cleanup());
    const env = await testEnv({ CI: undefined });
    t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
    const login = startJit(t, ['login'], { env, terminal: true });
    await login.readUntil('stdout', /Broker URL/);
    login.child.stdin?.write('not a url\r');
    await login.readUntil('stdout', /an http\(s\) URL/);
    // Clear the wrong answer, then give the real one.
    login.child.stdin?.write(`${'\x7f'.repeat(20)}${broker.url}\r`);
    await login.readUntil('stdout', /API token/);
    login.child.stdin?.write(`${broker.token}\r`);
    const done = await login.done;
    // Logged in where a keychain is reachable; refused for want of one elsewhere. Either way the URL was taken.
    if (done.code === 0) assert.match(done.stdout, new RegExp(`Logged in to ${broker.url.replaceAll('.', '\\.')} as user:admin`));
    else assert.match(done.stdout, /no OS keychain to keep the token in/);
  });
});
