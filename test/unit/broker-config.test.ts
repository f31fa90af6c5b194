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
      initialConfigYaml('user:admin').replace('actions: [read]', 'actions: [read, write]'),
      /broker\.yaml:\d+: policy\.rules\.0\.actions: action "write" does not apply to files resources/,
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
