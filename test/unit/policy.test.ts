import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { PolicyRule } from '../../src/broker/config.ts';
import { evaluate } from '../../src/broker/policy/evaluate.ts';
import { parseScope } from '../../src/core/scope.ts';

const rules: PolicyRule[] = [
  {
    name: 'train-only',
    subjects: ['user:ana'],
    scopes: ['datasets/train/**'],
    actions: ['read'],
    defaultTtlSeconds: 1800,
    maxTtlSeconds: 3600,
  },
  { name: 'admin', subjects: ['user:admin'], scopes: ['datasets/**'], actions: ['read'], defaultTtlSeconds: 3600, maxTtlSeconds: 28_800 },
];
const scopes = (...texts: string[]) => texts.map(parseScope);

describe('evaluate', () => {
  it('allows what a rule covers, names the rule, and applies its default TTL', () => {
    const decision = evaluate(rules, 'user:ana', scopes('datasets/train'), undefined);
    assert.equal(decision.ttlSeconds, 1800);
    assert.deepEqual(decision.explanation, [{ scope: 'datasets/train', rule: 'train-only' }]);
  });

  it('denies a scope no rule covers for this subject, even if another subject has it', () => {
    assert.throws(
      () => evaluate(rules, 'user:ana', scopes('datasets/train', 'datasets/eval'), undefined),
      (error: Error & { exitCode?: number; code?: string }) => {
        assert.equal(error.exitCode, 4);
        assert.equal(error.code, 'policy_denied');
        assert.match(error.message, /no policy rule lets user:ana read datasets\/eval/);
        return true;
      },
    );
    assert.throws(() => evaluate(rules, 'user:mallory', scopes('datasets/train'), undefined), /no policy rule/);
  });

  it('denies an action the rule does not list', () => {
    assert.throws(() => evaluate(rules, 'user:admin', scopes('datasets/train:write'), undefined), /no policy rule lets user:admin write/);
  });

  it('refuses a TTL over the maximum with the allowed maximum as the hint', () => {
    assert.equal(evaluate(rules, 'user:admin', scopes('datasets/eval'), 8 * 3600).ttlSeconds, 28_800);
    assert.throws(
      () => evaluate(rules, 'user:admin', scopes('datasets/eval'), 9 * 3600),
      (error: Error & { hint?: string; exitCode?: number }) => {
        assert.match(error.message, /ttl 9h is longer than the 8h/);
        assert.equal(error.hint, 'ask for --ttl 8h or less');
        assert.equal(error.exitCode, 2);
        return true;
      },
    );
  });
});
