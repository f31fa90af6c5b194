import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { initialConfigYaml, parseBrokerConfig } from '../../src/broker/config.ts';

describe('broker.yaml', () => {
  it('the file `jit broker init` writes is valid: 30 s heartbeat lapse, datasets/** for the admin up to 8 h', () => {
    const config = parseBrokerConfig(initialConfigYaml('user:admin'), '/srv/jit/broker.yaml');
    assert.equal(config.heartbeatTimeoutSeconds, 30);
    assert.deepEqual(config.resources, { datasets: { kind: 'files', root: '/srv/jit/data/datasets' } });
    assert.deepEqual(config.rules[0]?.scopes, ['datasets/**']);
    assert.equal(config.rules[0]?.maxTtlSeconds, 8 * 3600);
  });

  const broken: [string, string, RegExp][] = [
    [
      'a bad duration',
      initialConfigYaml('user:admin').replace('maxTtl: 8h', 'maxTtl: 8 hours'),
      /broker\.yaml:\d+: policy\.rules\.0\.maxTtl: invalid duration/,
    ],
    ['an unknown key', initialConfigYaml('user:admin').replace('grants:', 'grantz:'), /broker\.yaml:\d+: .*grantz/],
    [
      'a resource kind it does not know',
      initialConfigYaml('user:admin').replace('kind: files', 'kind: ftp'),
      /broker\.yaml:\d+: resources\.datasets\.kind/,
    ],
    [
      'a rule on an undeclared resource',
      initialConfigYaml('user:admin').replace('"datasets/**"', '"warehouse/**"'),
      /broker\.yaml:\d+: policy\.rules\.0\.scopes\.0: unknown resource "warehouse"/,
    ],
    [
      'an action files do not have',
      initialConfigYaml('user:admin').replace('actions: [read]', 'actions: [read, execute]'),
      /broker\.yaml:\d+: policy\.rules\.0\.actions: action "execute" does not apply to files resources/,
    ],
    [
      'a scope pattern outside the grammar',
      initialConfigYaml('user:admin').replace('"datasets/**"', '"datasets/my data"'),
      /broker\.yaml:\d+: policy\.rules\.0\.scopes\.0: a scope pattern is/,
    ],
    [
      'a duration without a unit',
      initialConfigYaml('user:admin').replace('heartbeatTimeout: 30s', 'heartbeatTimeout: 30'),
      /broker\.yaml:\d+: grants\.heartbeatTimeout: a duration needs a unit/,
    ],
    [
      'a missing maxTtl',
      initialConfigYaml('user:admin').replace('      maxTtl: 8h\n', ''),
      /broker\.yaml:\d+: policy\.rules\.0\.maxTtl: required/,
    ],
    [
      'a pattern with ..',
      initialConfigYaml('user:admin').replace('"datasets/**"', '"datasets/../secrets"'),
      /broker\.yaml:\d+: policy\.rules\.0\.scopes\.0: path segments "\." and "\.\." are not allowed/,
    ],
    [
      'a trusted proxy that is no address',
      `${initialConfigYaml('user:admin')}trustedProxies: ["lb.internal"]\n`,
      /broker\.yaml:\d+: trustedProxies\.0: a trusted proxy is an IP address or CIDR range/,
    ],
    [
      'an approval timeout without a unit',
      initialConfigYaml('user:admin').replace('approvalTimeout: 1h', 'approvalTimeout: 60'),
      /broker\.yaml:\d+: grants\.approvalTimeout: a duration needs a unit/,
    ],
    [
      'a postgres resource with its admin URL in neither urlEnv nor urlFile',
      initialConfigYaml('user:admin').replace('resources:\n', 'resources:\n  warehouse:\n    kind: postgres\n    tables: ["public.*"]\n'),
      /broker\.yaml:\d+: resources\.warehouse\.urlEnv: a postgres resource needs exactly one of urlEnv and urlFile/,
    ],
    [
      'a postgres table that is not schema.table',
      initialConfigYaml('user:admin').replace(
        'resources:\n',
        'resources:\n  warehouse:\n    kind: postgres\n    urlEnv: WAREHOUSE_URL\n    tables: ["customers"]\n',
      ),
      /broker\.yaml:\d+: resources\.warehouse\.tables\.0: a table is "schema\.table"/,
    ],
    [
      'a files action on a postgres scope',
      initialConfigYaml('user:admin')
        .replace('resources:\n', 'resources:\n  warehouse:\n    kind: postgres\n    urlEnv: WAREHOUSE_URL\n    tables: ["public.*"]\n')
        .replace('scopes: ["datasets/**"]', 'scopes: ["warehouse/public.*"]'),
      /broker\.yaml:\d+: policy\.rules\.0\.actions: action "read" does not apply to postgres resources \(they have: select, insert, update, delete\)/,
    ],
    ['a YAML syntax error', 'version: 1\nresources: [oops\n', /broker\.yaml:\d+: /],
  ];
  for (const [what, text, expected] of broken) {
    it(`names the file, line and key for ${what}`, () => {
      assert.throws(
        () => parseBrokerConfig(text, '/srv/jit/broker.yaml'),
        (error: Error & { exitCode?: number }) => {
          assert.match(error.message, expected);
          assert.equal(error.exitCode, 2);
          return true;
        },
      );
    });
  }

  it('drops a trailing slash from publicUrl, so job URLs have no double slash', () => {
    const config = parseBrokerConfig(`publicUrl: https://jit.example.com/\n${initialConfigYaml('user:admin')}`, '/srv/jit/broker.yaml');
    assert.equal(config.publicUrl, 'https://jit.example.com');
  });

  it('points at the line of the offending key', () => {
    const text = initialConfigYaml('user:admin').replace('maxTtl: 8h', 'maxTtl: soon');
    const line = text.split('\n').findIndex((row) => row.includes('maxTtl: soon')) + 1;
    assert.throws(
      () => parseBrokerConfig(text, 'broker.yaml'),
      (error: Error) => error.message.startsWith(`broker.yaml:${line}: policy.rules.0.maxTtl`),
    );
  });
});

describe('broker.yaml policy: groups, claims, approval, deny', () => {
  /** The commented examples `jit broker init` writes, uncommented as an admin would. */
  const uncommented = (yaml: string) => yaml.replace(/^(\s*)# (?=\s*(- |[A-Za-z-]+:))/gm, '$1');

  it('the commented examples in the initial file are a valid policy once uncommented', () => {
    const plain = parseBrokerConfig(initialConfigYaml('user:admin'), '/srv/jit/broker.yaml');
    assert.deepEqual([plain.rules.length, plain.deny.length, plain.groups], [1, 0, {}], 'commented out: behaviour unchanged');
    const config = parseBrokerConfig(uncommented(initialConfigYaml('user:admin')), '/srv/jit/broker.yaml');
    assert.deepEqual(config.groups, { 'ml-team': ['user:ana', 'user:bo'], 'data-owners': ['user:olga', 'user:pat'] });
    assert.deepEqual(config.rules[1]?.approval, { required: true, approvers: ['group:data-owners'], count: 2 });
    assert.deepEqual(config.deny[0]?.scopes, ['datasets/pii/**']);
    assert.deepEqual(config.deny[0]?.actions, [], 'a deny rule without actions refuses every action');
  });

  const base = `version: 1
resources:
  datasets:
    kind: files
    root: data
policy:
  groups:
    ml-team: ["user:ana", "user:bo"]
    owners: ["user:olga", "user:ana"]
  rules:
    - name: ml
      subjects: ["group:ml-team"]
      scopes: ["datasets/train/**"]
      maxTtl: 2h
      approval: { required: true, approvers: ["group:owners"], count: 1 }
    - name: ci
      claims: { iss: "https://token.actions.githubusercontent.com", repository: "acme/*" }
      scopes: ["datasets/eval/**"]
      maxTtl: 1h
  deny:
    - name: no-pii
      subjects: ["group:ml-team"]
      scopes: ["datasets/pii/**"]
      reason: PII needs a DPA
`;
  it('parses groups, claims, approval and deny rules', () => {
    const config = parseBrokerConfig(base, '/srv/jit/broker.yaml');
    assert.deepEqual(config.rules[1]?.claims, { iss: 'https://token.actions.githubusercontent.com', repository: 'acme/*' });
    assert.deepEqual(config.rules[1]?.subjects, []);
    assert.equal(config.rules[1]?.approval, undefined);
    assert.deepEqual(config.deny[0]?.reason, 'PII needs a DPA');
  });

  const broken: [string, string, string, RegExp][] = [
    [
      'an unknown group in a rule',
      base.replace(
        'subjects: ["group:ml-team"]\n      scopes: ["datasets/train',
        'subjects: ["group:ml-teem"]\n      scopes: ["datasets/train',
      ),
      'subjects: ["group:ml-teem"]',
      /policy\.rules\.0\.subjects\.0: unknown group "ml-teem" \(declare it under policy\.groups; known: ml-team, owners\)/,
    ],
    [
      'an unknown group among approvers',
      base.replace('approvers: ["group:owners"]', 'approvers: ["group:ownerz"]'),
      'approvers: ["group:ownerz"]',
      /policy\.rules\.0\.approval\.approvers\.0: unknown group "ownerz"/,
    ],
    [
      'an unknown group in a deny rule',
      base.replace(
        'subjects: ["group:ml-team"]\n      scopes: ["datasets/pii',
        'subjects: ["group:interns"]\n      scopes: ["datasets/pii',
      ),
      'subjects: ["group:interns"]',
      /policy\.deny\.0\.subjects\.0: unknown group "interns"/,
    ],
    [
      'a count no approver set can meet without self-approval',
      base.replace('count: 1 }', 'count: 2 }'),
      'count: 2 }',
      /policy\.rules\.0\.approval\.count: count 2 is more than the 1 distinct approver\(s\) who could approve besides the requester \(no self-approval\)/,
    ],
    [
      'approval without approvers',
      base.replace('approvers: ["group:owners"], ', ''),
      'approval: { required: true, count: 1 }',
      /policy\.rules\.0\.approval\.approvers: an approval rule needs approvers/,
    ],
    ['a count of zero', base.replace('count: 1 }', 'count: 0 }'), 'count: 0 }', /policy\.rules\.0\.approval\.count: /],
    [
      'duplicate rule names, across allow and deny',
      base.replace('- name: no-pii', '- name: ml'),
      '- name: ml\n      subjects: ["group:ml-team"]\n      scopes: ["datasets/pii',
      /policy\.deny\.0\.name: duplicate rule name "ml" \(also policy\.rules\.0\)/,
    ],
    [
      'a deny rule on an unknown resource',
      base.replace('"datasets/pii/**"', '"models/pii/**"'),
      '"models/pii/**"',
      /policy\.deny\.0\.scopes\.0: unknown resource "models"/,
    ],
    [
      'a bad pattern in a deny rule',
      base.replace('"datasets/pii/**"', '"datasets/p ii"'),
      '"datasets/p ii"',
      /policy\.deny\.0\.scopes\.0: a scope pattern is RESOURCE\[\/PATH\]/,
    ],
    ['a deny rule without a reason', base.replace('      reason: PII needs a DPA\n', ''), '- name: no-pii', /policy\.deny\.0\.reason: /],
    [
      'a rule with neither subjects nor claims',
      base.replace('      claims: { iss: "https://token.actions.githubusercontent.com", repository: "acme/*" }\n', ''),
      '- name: ci',
      /policy\.rules\.1\.subjects: an allow rule needs subjects, claims, or both/,
    ],
    [
      'a group member that is a group',
      base.replace('owners: ["user:olga", "user:ana"]', 'owners: ["user:olga", "group:ml-team"]'),
      'owners: [',
      /policy\.groups\.owners\.1: a group member is user:NAME \(groups do not nest\)/,
    ],
    [
      'a claim with an empty pattern',
      base.replace('repository: "acme/*"', 'repository: ""'),
      'repository: ""',
      /policy\.rules\.1\.claims\.repository: a claim pattern is a non-empty string/,
    ],
    [
      'an unknown key in an approval',
      base.replace('count: 1 }', 'count: 1, quorum: 2 }'),
      'quorum',
      /policy\.rules\.0\.approval: .*quorum/,
    ],
  ];
  for (const [what, text, lineMarker, expected] of broken) {
    it(`names the file, line and key for ${what}`, () => {
      const line = text.slice(0, text.indexOf(lineMarker)).split('\n').length;
      assert.ok(text.includes(lineMarker), `the test's marker is in the text: ${lineMarker}`);
      assert.throws(
        () => parseBrokerConfig(text, '/srv/jit/broker.yaml'),
        (error: Error & { exitCode?: number }) => {
          assert.match(error.message, expected);
          assert.ok(error.message.startsWith(`/srv/jit/broker.yaml:${line}: `), `${error.message} names line ${line}`);
          assert.equal(error.exitCode, 2);
          return true;
        },
      );
    });
  }

  it('checks the approver groups of an approval that is switched off, and drops the requirement', () => {
    const off = base.replace('approval: { required: true,', 'approval: { required: false,');
    assert.equal(parseBrokerConfig(off, 'b.yaml').rules[0]?.approval, undefined);
    assert.throws(
      () => parseBrokerConfig(off.replace('group:owners', 'group:ownerz'), 'b.yaml'),
      /policy\.rules\.0\.approval\.approvers\.0: unknown group "ownerz"/,
    );
  });

  it('counts every approver for a claims-only rule: a CI identity is never an approver', () => {
    const ci = base.replace('      maxTtl: 1h\n', '      maxTtl: 1h\n      approval: { approvers: ["group:owners"], count: 3 }\n');
    assert.throws(
      () => parseBrokerConfig(ci, 'b.yaml'),
      (error: Error) =>
        error.message.endsWith('policy.rules.1.approval.count: count 3 is more than the 2 distinct approver(s) who could approve'),
    );
    assert.equal(parseBrokerConfig(ci.replace('count: 3', 'count: 2'), 'b.yaml').rules[1]?.approval?.count, 2);
  });

  it('takes a deny rule without subjects or claims as one for everyone', () => {
    const config = parseBrokerConfig(
      base.replace('      subjects: ["group:ml-team"]\n      scopes: ["datasets/pii', '      scopes: ["datasets/pii'),
      'b.yaml',
    );
    assert.deepEqual([config.deny[0]?.subjects, config.deny[0]?.claims], [[], {}]);
  });

  it('counts a requester-free approver set in full when no requester can approve', () => {
    const config = parseBrokerConfig(
      base.replace('owners: ["user:olga", "user:ana"]', 'owners: ["user:olga", "user:pat"]').replace('count: 1 }', 'count: 2 }'),
      'b.yaml',
    );
    assert.equal(config.rules[0]?.approval?.count, 2);
  });
});
