import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { IssuedGrant } from '../../src/core/grant.ts';
import { api, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { jit, testEnv } from '../helpers/cli.ts';
import { brokerGrants, localGrants } from '../helpers/state.ts';

const scratch: string[] = [];
after(() => Promise.all(scratch.map((dir) => rm(dir, { recursive: true, force: true }))));

/** A broker directory made by the real `jit broker init`, its broker.yaml then given `policy`. */
async function brokerDir(policy?: string): Promise<{ dir: string; file: string; env: NodeJS.ProcessEnv }> {
  const root = await mkdtemp(path.join(tmpdir(), 'jit-e2e-policy-'));
  scratch.push(root);
  const dir = path.join(root, 'broker');
  const env = await testEnv();
  const init = await jit(['broker', 'init', '--dir', dir], { env });
  assert.equal(init.code, 0, init.stderr);
  const file = path.join(dir, 'broker.yaml');
  if (policy !== undefined) {
    const yaml = await readFile(file, 'utf8');
    await writeFile(file, `${yaml.slice(0, yaml.indexOf('policy:'))}${policy}`);
  }
  return { dir, file, env };
}

const POLICY = `policy:
  groups:
    ml-team: ["user:ana", "user:bo"]
    owners: ["user:olga", "user:pat"]
  rules:
    - name: ml-train
      subjects: ["group:ml-team"]
      scopes: ["datasets/train/**"]
      defaultTtl: 1h
      maxTtl: 4h
    - name: ml-eval-approved
      subjects: ["group:ml-team"]
      scopes: ["datasets/eval/**"]
      maxTtl: 2h
      approval: { required: true, approvers: ["group:owners"], count: 2 }
  deny:
    - name: no-pii
      subjects: ["group:ml-team"]
      scopes: ["datasets/pii/**"]
      reason: PII needs a signed DPA
`;

describe('jit broker check-config', () => {
  it('says in one line what a valid directory holds, and exits 0', async () => {
    const { dir, file, env } = await brokerDir(POLICY);
    const result = await jit(['broker', 'check-config', '--dir', dir], { env });
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, `${file} is valid: 1 resource, 2 rules, 1 deny rule, 2 groups\n`);
    assert.equal(result.stderr, '');
    const json = await jit(['broker', 'check-config', '--dir', dir, '--json'], { env });
    assert.deepEqual(JSON.parse(json.stdout), { valid: true, file, resources: 1, rules: 2, denyRules: 1, groups: 2 });
  });

  it('names file, line and key of a broken policy, exits 2, and prints nothing on stdout', async () => {
    const { dir, file, env } = await brokerDir(POLICY.replace('approvers: ["group:owners"]', 'approvers: ["group:ownerz"]'));
    const line = (await readFile(file, 'utf8')).split('\n').findIndex((row) => row.includes('group:ownerz')) + 1;
    const result = await jit(['broker', 'check-config', '--dir', dir], { env });
    assert.equal(result.code, 2);
    assert.equal(result.stdout, '');
    assert.equal(
      result.stderr,
      `jit: error: ${file}:${line}: policy.rules.1.approval.approvers.0: unknown group "ownerz" (declare it under policy.groups; known: ml-team, owners); see docs/broker-config.md for the format\n`,
    );
  });

  it('refuses a resource root that does not exist', async () => {
    const { dir, env } = await brokerDir();
    await rm(path.join(dir, 'data', 'datasets'), { recursive: true });
    const result = await jit(['broker', 'check-config', '--dir', dir], { env });
    assert.equal(result.code, 2);
    assert.match(result.stderr, /^jit: error: .*broker\.yaml: resources\.datasets\.root: .*datasets is not a directory/);
  });
});

describe('jit policy explain', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  before(async () => {
    ({ dir, env } = await brokerDir(POLICY));
  });
  const explain = (...args: string[]) => jit(['policy', 'explain', '--dir', dir, ...args], { env });

  it('prints the decision and, per scope, which rule allowed it and why the others did not; exit 0', async () => {
    const result = await explain('--subject', 'user:ana', '--scope', 'datasets/train', '--ttl', '2h');
    assert.equal(result.code, 0, result.stderr);
    assert.equal(
      result.stdout,
      [
        'user:ana: allowed for 2h (max 4h), no approval needed',
        '',
        'datasets/train: allowed by ml-train',
        '  RULE              KIND   OUTCOME',
        '  ml-train          allow  allowed',
        '  no-pii            deny   pattern did not match',
        '  ml-eval-approved  allow  pattern did not match',
        '',
      ].join('\n'),
    );
  });

  it('--json prints the Decision, approval requirement included', async () => {
    const result = await explain('--subject', 'user:bo', '--scope', 'datasets/eval', '--json');
    assert.equal(result.code, 0, result.stderr);
    const decision = JSON.parse(result.stdout) as Record<string, unknown>;
    assert.equal(decision.allowed, true);
    assert.equal(decision.ttlSeconds, 3600);
    assert.deepEqual(decision.approval, { required: true, approvers: ['group:owners'], count: 2 });
    assert.deepEqual((decision.explanation as { rule: string }[])[0]?.rule, 'ml-eval-approved');
  });

  it('exits 4 on a deny rule and says which one and why', async () => {
    const result = await explain('--subject', 'user:ana', '--scope', 'datasets/pii/people.csv');
    assert.equal(result.code, 4);
    assert.match(
      result.stdout,
      /^user:ana: refused: deny rule "no-pii" refuses datasets\/pii\/people\.csv to user:ana: PII needs a signed DPA\n/,
    );
    assert.match(result.stdout, /\n {2}no-pii +deny +refused: PII needs a signed DPA\n/);
  });

  it('exits 4 for a subject no rule names', async () => {
    const result = await explain('--subject', 'user:mallory', '--scope', 'datasets/train', '--json');
    assert.equal(result.code, 4);
    const decision = JSON.parse(result.stdout) as { allowed: boolean; refusal: { code: string } };
    assert.equal(decision.allowed, false);
    assert.equal(decision.refusal.code, 'policy_denied');
  });

  it('applies --action to scopes without one', async () => {
    const result = await explain('--subject', 'user:ana', '--scope', 'datasets/train', '--action', 'execute');
    assert.equal(result.code, 2, 'files resources have no execute action');
    assert.match(result.stderr, /^jit: error: action "execute" does not apply to files resource "datasets"/);
  });

  it('exits 2 on bad input: a TTL over every max, an unknown resource, a bad subject, a missing directory', async () => {
    const ttl = await explain('--subject', 'user:ana', '--scope', 'datasets/train', '--ttl', '9h');
    assert.equal(ttl.code, 2);
    assert.match(ttl.stdout, /refused: ttl 9h is longer than the 4h the policy allows/);
    const resource = await explain('--subject', 'user:ana', '--scope', 'dataset/train');
    assert.equal(resource.code, 2);
    assert.equal(resource.stderr, 'jit: error: unknown resource "dataset"; did you mean "datasets"?\n');
    const subject = await explain('--subject', 'group:ml-team', '--scope', 'datasets/train');
    assert.equal(subject.code, 2);
    assert.match(subject.stderr, /^jit: error: invalid subject "group:ml-team"/);
    const missing = await jit(
      ['policy', 'explain', '--dir', path.join(dir, 'nope'), '--subject', 'user:ana', '--scope', 'datasets/train'],
      {
        env,
      },
    );
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /cannot read broker config/);
  });
});

describe('a request whose rule needs approval', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker();
    await broker.stop();
    const file = path.join(broker.dir, 'broker.yaml');
    const yaml = await readFile(file, 'utf8');
    await writeFile(
      file,
      yaml.replace(
        '      maxTtl: 8h\n',
        '      maxTtl: 8h\n      approval: { required: true, approvers: ["user:olga", "user:pat"], count: 2 }\n',
      ),
    );
    await broker.restart();
  });
  after(() => broker.cleanup());

  it('is held pending (202) naming its approvers; jit run --no-wait exits 9 with its id and runs nothing', async () => {
    const direct = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes: ['datasets/train'] });
    assert.equal(direct.status, 202);
    assert.equal(direct.body.state, 'pending');
    assert.deepEqual(direct.body.approval?.requirements, [
      { scopes: ['datasets/train'], approvers: ['user:olga', 'user:pat'], count: 2, approvedBy: [] },
    ]);
    const env = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token });
    scratch.push(env.HOME ?? '');
    const result = await jit(
      [
        'run',
        '--no-wait',
        '--keychain',
        'memory',
        '--scope',
        'datasets/train',
        '--',
        process.execPath,
        '-e',
        'process.stdout.write("job ran")',
      ],
      { env },
    );
    assert.equal(result.code, 9);
    assert.equal(result.stdout, '', 'the job never ran');
    const id = /grant (g_[0-9a-f]{20}) is waiting for approval by 2 of user:olga, user:pat/.exec(result.stderr)?.[1];
    assert.ok(id, result.stderr);
    assert.match(result.stderr, new RegExp(`jit run --grant ${id} -- `));
    const held = (await brokerGrants(broker)).find((grant) => grant.id === id);
    assert.equal(held?.state, 'pending', 'it stays pending for a later `jit run --grant`');
    const local = (await localGrants(env))[id];
    assert.deepEqual([local?.state, local?.pid, local?.wrapper], ['pending', null, null], 'held here by no process');
  });
});
