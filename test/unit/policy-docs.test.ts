import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parseBrokerConfig } from '../../src/broker/config.ts';
import { decide, type Principal } from '../../src/broker/policy/evaluate.ts';
import { parseScope } from '../../src/core/scope.ts';
import { ROOT } from '../helpers/cli.ts';

/** docs/policy.md promises what its examples decide; these tests hold it to that. */
const doc = readFileSync(path.join(ROOT, 'docs', 'policy.md'), 'utf8');
const blocks = (language: string) =>
  [...doc.matchAll(new RegExp(`\`\`\`${language}\\n([\\s\\S]*?)\`\`\``, 'g'))].map((match) => match[1] ?? '');
const HEADER = 'version: 1\nresources:\n  datasets:\n    kind: files\n    root: data\n';
const example = `${HEADER}${blocks('yaml')[0]}`;
const config = parseBrokerConfig(example, '/srv/jit/broker.yaml');
const ask = (principal: Principal, scope: string, ttl?: number) => decide(config, principal, [parseScope(scope)], ttl);

describe('docs/policy.md', () => {
  it('the complete example is a valid policy', () => {
    assert.deepEqual([config.rules.length, config.deny.length, Object.keys(config.groups)], [3, 1, ['ml-team', 'data-owners']]);
  });

  it('decides the table of requests as the page says', () => {
    const train = ask({ subject: 'user:bo' }, 'datasets/train');
    assert.deepEqual([train.allowed, train.explanation[0]?.rule, train.ttlSeconds], [true, 'ml-train', 3600]);
    assert.equal(ask({ subject: 'user:bo' }, 'datasets/train', 9 * 3600).refusal?.code, 'ttl_too_long');
    const evalSet = ask({ subject: 'user:ana' }, 'datasets/eval');
    assert.equal(evalSet.explanation[0]?.rule, 'ml-eval-approved');
    assert.deepEqual(evalSet.approval, { required: true, approvers: ['group:data-owners'], count: 2 });
    assert.equal(ask({ subject: 'user:ana' }, 'datasets/pii/people.csv').explanation[0]?.deniedBy?.rule, 'no-pii');
    assert.equal(ask({ subject: 'user:ana' }, 'datasets').explanation[0]?.deniedBy?.rule, 'no-pii');
    assert.equal(ask({ subject: 'user:olga' }, 'datasets/train').refusal?.code, 'policy_denied');
    const ci = ask(
      {
        subject: 'ci:acme/models',
        claims: { iss: 'https://token.actions.githubusercontent.com', repository: 'acme/models', ref: 'refs/heads/main' },
      },
      'datasets/eval',
    );
    assert.deepEqual([ci.allowed, ci.explanation[0]?.rule, ci.ttlSeconds], [true, 'ci-eval', 1800]);
  });

  it('shows the real --json decision', () => {
    assert.deepEqual(JSON.parse(blocks('json')[0] ?? ''), ask({ subject: 'user:bo' }, 'datasets/train'));
  });

  it('shows the real error for an approval count no approvers can meet', () => {
    const shown = doc.match(/policy\.rules\.1\.approval\.count: (count 3 [^;]*);/)?.[1];
    assert.ok(shown, 'the page shows the message');
    assert.throws(
      () => parseBrokerConfig(example.replace('count: 2', 'count: 3'), '/srv/jit/broker.yaml'),
      (error: Error) => {
        assert.ok(error.message.endsWith(`policy.rules.1.approval.count: ${shown}`), error.message);
        return true;
      },
    );
  });
});
