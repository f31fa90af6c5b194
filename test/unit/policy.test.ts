import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DenyRule, PolicyRule } from '../../src/broker/config.ts';
import { decide, evaluate, type Policy, patternReaches } from '../../src/broker/policy/evaluate.ts';
import { parseScope } from '../../src/core/scope.ts';

const rule = (fields: Partial<PolicyRule> & Pick<PolicyRule, 'name' | 'scopes'>): PolicyRule => ({
  subjects: [],
  claims: {},
  actions: ['read'],
  defaultTtlSeconds: 3600,
  maxTtlSeconds: 3600,
  ...fields,
});
const deny = (fields: Partial<DenyRule> & Pick<DenyRule, 'name' | 'scopes' | 'reason'>): DenyRule => ({
  subjects: [],
  claims: {},
  actions: [],
  ...fields,
});

const rules: PolicyRule[] = [
  rule({ name: 'train-only', subjects: ['user:ana'], scopes: ['datasets/train/**'], defaultTtlSeconds: 1800, maxTtlSeconds: 3600 }),
  rule({ name: 'admin', subjects: ['user:admin'], scopes: ['datasets/**'], maxTtlSeconds: 28_800 }),
];
const policy: Policy = { rules };
const scopes = (...texts: string[]) => texts.map(parseScope);
const ana = { subject: 'user:ana' };

type Failure = Error & { exitCode?: number; code?: string; hint?: string };

describe('evaluate', () => {
  it('allows what a rule covers, names the rule, and applies its default TTL', () => {
    const decision = evaluate(policy, ana, scopes('datasets/train'), undefined);
    assert.equal(decision.ttlSeconds, 1800);
    assert.equal(decision.maxTtlSeconds, 3600);
    assert.deepEqual(
      decision.explanation.map(({ scope, rule }) => ({ scope, rule })),
      [{ scope: 'datasets/train', rule: 'train-only' }],
    );
    assert.deepEqual(decision.approval, { required: false, approvers: [], count: 0 });
  });

  it('denies a scope no rule covers for this subject, even if another subject has it', () => {
    assert.throws(
      () => evaluate(policy, ana, scopes('datasets/train', 'datasets/eval'), undefined),
      (error: Failure) => {
        assert.equal(error.exitCode, 4);
        assert.equal(error.code, 'policy_denied');
        assert.match(error.message, /no policy rule lets user:ana read datasets\/eval/);
        return true;
      },
    );
    assert.throws(() => evaluate(policy, { subject: 'user:mallory' }, scopes('datasets/train'), undefined), /no policy rule/);
  });

  it('denies an action the rule does not list', () => {
    assert.throws(
      () => evaluate(policy, { subject: 'user:admin' }, scopes('datasets/train:write'), undefined),
      /no policy rule lets user:admin write/,
    );
  });

  it('refuses a TTL over the maximum with the allowed maximum as the hint', () => {
    assert.equal(evaluate(policy, { subject: 'user:admin' }, scopes('datasets/eval'), 8 * 3600).ttlSeconds, 28_800);
    assert.throws(
      () => evaluate(policy, { subject: 'user:admin' }, scopes('datasets/eval'), 9 * 3600),
      (error: Failure) => {
        assert.match(error.message, /ttl 9h is longer than the 8h/);
        assert.equal(error.hint, 'ask for --ttl 8h or less');
        assert.equal(error.code, 'ttl_too_long');
        assert.equal(error.exitCode, 2);
        return true;
      },
    );
  });
});

describe('ttl caps across rules', () => {
  const layered: Policy = {
    rules: [
      rule({ name: 'short', subjects: ['user:ana'], scopes: ['datasets/**'], defaultTtlSeconds: 600, maxTtlSeconds: 3600 }),
      rule({ name: 'long-train', subjects: ['user:ana'], scopes: ['datasets/train/**'], defaultTtlSeconds: 3600, maxTtlSeconds: 8 * 3600 }),
    ],
  };

  it('uses the first matching rule, and a later one when the TTL is over the first one’s max', () => {
    assert.equal(evaluate(layered, ana, scopes('datasets/train'), undefined).explanation[0]?.rule, 'short');
    const decision = evaluate(layered, ana, scopes('datasets/train'), 4 * 3600);
    assert.equal(decision.explanation[0]?.rule, 'long-train');
    assert.deepEqual(decision.explanation[0]?.notMatched, [{ rule: 'short', kind: 'allow', why: 'ttl 4h over max 1h' }]);
  });

  it('caps a grant of several scopes at the strictest scope, and defaults to the smallest default', () => {
    assert.equal(evaluate(layered, ana, scopes('datasets/train', 'datasets/eval'), undefined).ttlSeconds, 600);
    assert.equal(evaluate(layered, ana, scopes('datasets/train', 'datasets/eval'), undefined).maxTtlSeconds, 3600);
    assert.throws(
      () => evaluate(layered, ana, scopes('datasets/train', 'datasets/eval'), 2 * 3600),
      (error: Failure) => {
        assert.equal(error.code, 'ttl_too_long');
        assert.match(error.message, /ttl 2h is longer than the 1h the policy allows/);
        return true;
      },
    );
  });
});

describe('groups', () => {
  const grouped: Policy = {
    groups: { 'ml-team': ['user:ana', 'user:bo'] },
    rules: [rule({ name: 'ml-train', subjects: ['group:ml-team'], scopes: ['datasets/train/**'] })],
  };

  it('a group subject matches every member listed in policy.groups, and nobody else', () => {
    assert.equal(evaluate(grouped, { subject: 'user:bo' }, scopes('datasets/train'), undefined).explanation[0]?.rule, 'ml-train');
    assert.throws(() => evaluate(grouped, { subject: 'user:cy' }, scopes('datasets/train'), undefined), /no policy rule lets user:cy/);
    assert.deepEqual(decide(grouped, { subject: 'user:cy' }, scopes('datasets/train'), undefined).explanation[0]?.notMatched, [
      { rule: 'ml-train', kind: 'allow', why: 'subject did not match' },
    ]);
  });

  it('takes groups the caller resolved elsewhere too', () => {
    assert.equal(evaluate(grouped, { subject: 'user:cy', groups: ['ml-team'] }, scopes('datasets/train'), undefined).allowed, true);
  });
});

describe('claims', () => {
  const ci: Policy = {
    rules: [
      rule({
        name: 'ci-main',
        claims: { iss: 'https://token.actions.githubusercontent.com', repository: 'acme/*', ref: 'refs/heads/main' },
        scopes: ['datasets/eval/**'],
      }),
    ],
  };
  const claims = { iss: 'https://token.actions.githubusercontent.com', repository: 'acme/models', ref: 'refs/heads/main' };

  it('matches a principal whose claims all match, with globs in the values', () => {
    const decision = evaluate(ci, { subject: 'ci:acme/models', claims }, scopes('datasets/eval'), undefined);
    assert.equal(decision.explanation[0]?.rule, 'ci-main');
  });

  it('names the claims that did not match', () => {
    const other = { ...claims, repository: 'evil/models', ref: 'refs/heads/dev' };
    const decision = decide(ci, { subject: 'ci:evil/models', claims: other }, scopes('datasets/eval'), undefined);
    assert.equal(decision.allowed, false);
    assert.deepEqual(decision.explanation[0]?.notMatched, [
      { rule: 'ci-main', kind: 'allow', why: 'claims did not match (repository, ref)' },
    ]);
    assert.equal(decide(ci, { subject: 'user:ana' }, scopes('datasets/eval'), undefined).allowed, false, 'no claims, no match');
  });

  it('`*` in a claim stays within one path segment; `**` crosses them', () => {
    const nested = { ...claims, repository: 'acme/team/models' };
    assert.equal(decide(ci, { subject: 'ci:x', claims: nested }, scopes('datasets/eval'), undefined).allowed, false);
    const deep: Policy = { rules: [rule({ name: 'deep', claims: { repository: 'acme/**' }, scopes: ['datasets/**'] })] };
    assert.equal(decide(deep, { subject: 'ci:x', claims: nested }, scopes('datasets/eval'), undefined).allowed, true);
  });

  it('a rule with subjects and claims needs both', () => {
    const both: Policy = {
      rules: [rule({ name: 'both', subjects: ['user:ana'], claims: { ref: 'refs/heads/main' }, scopes: ['datasets/**'] })],
    };
    assert.equal(decide(both, { subject: 'user:ana' }, scopes('datasets/eval'), undefined).allowed, false);
    assert.equal(
      decide(both, { subject: 'user:ana', claims: { ref: 'refs/heads/main' } }, scopes('datasets/eval'), undefined).allowed,
      true,
    );
  });
});

describe('deny rules', () => {
  const guarded: Policy = {
    groups: { contractors: ['user:bo'] },
    rules: [rule({ name: 'everything', subjects: ['user:ana', 'user:bo'], scopes: ['datasets/**'] })],
    deny: [
      deny({ name: 'no-pii', scopes: ['datasets/pii/**'], reason: 'PII needs a DPA' }),
      deny({
        name: 'no-contractors-eval',
        subjects: ['group:contractors'],
        scopes: ['datasets/eval/**'],
        reason: 'eval set stays in-house',
      }),
    ],
  };

  it('win over an allow, and say which deny rule and why', () => {
    assert.throws(
      () => evaluate(guarded, ana, scopes('datasets/pii/people.csv'), undefined),
      (error: Failure) => {
        assert.equal(error.exitCode, 4);
        assert.equal(error.code, 'policy_denied');
        assert.equal(error.message, 'deny rule "no-pii" refuses datasets/pii/people.csv to user:ana: PII needs a DPA');
        return true;
      },
    );
    const decision = decide(guarded, ana, scopes('datasets/pii/people.csv'), undefined);
    assert.deepEqual(decision.explanation[0]?.deniedBy, { rule: 'no-pii', reason: 'PII needs a DPA' });
    assert.equal(decision.explanation[0]?.rule, null);
  });

  it('refuse a request for a parent that would reach the denied path', () => {
    assert.equal(decide(guarded, ana, scopes('datasets'), undefined).explanation[0]?.deniedBy?.rule, 'no-pii');
    assert.equal(decide(guarded, ana, scopes('datasets/train'), undefined).allowed, true);
  });

  it('apply to their subjects only (groups included)', () => {
    assert.equal(decide(guarded, ana, scopes('datasets/eval'), undefined).allowed, true);
    const bo = decide(guarded, { subject: 'user:bo' }, scopes('datasets/eval'), undefined);
    assert.equal(bo.explanation[0]?.deniedBy?.rule, 'no-contractors-eval');
    assert.deepEqual(
      bo.explanation[0]?.notMatched.find((miss) => miss.rule === 'no-pii'),
      { rule: 'no-pii', kind: 'deny', why: 'pattern did not match' },
    );
  });

  it('with actions refuse those actions only', () => {
    const writes: Policy = { ...guarded, deny: [deny({ name: 'no-read', actions: ['read'], scopes: ['datasets/**'], reason: 'frozen' })] };
    assert.equal(decide(writes, ana, scopes('datasets/train'), undefined).allowed, false);
    const other: Policy = { ...guarded, deny: [deny({ name: 'no-write', actions: ['write'], scopes: ['datasets/**'], reason: 'frozen' })] };
    assert.equal(decide(other, ana, scopes('datasets/train'), undefined).allowed, true);
    assert.deepEqual(decide(other, ana, scopes('datasets/train'), undefined).explanation[0]?.notMatched, [
      { rule: 'no-write', kind: 'deny', why: 'action read not listed' },
    ]);
  });
});

describe('approval', () => {
  const approving: Policy = {
    groups: { owners: ['user:olga', 'user:pat'] },
    rules: [
      rule({ name: 'train', subjects: ['user:ana'], scopes: ['datasets/train/**'] }),
      rule({
        name: 'eval-approved',
        subjects: ['user:ana'],
        scopes: ['datasets/eval/**'],
        approval: { required: true, approvers: ['group:owners', 'user:root'], count: 2 },
      }),
      rule({
        name: 'pii-approved',
        subjects: ['user:ana'],
        scopes: ['datasets/pii/**'],
        approval: { required: true, approvers: ['user:dpo'], count: 1 },
      }),
    ],
  };

  it('is carried in the decision, with the scopes it applies to', () => {
    const decision = evaluate(approving, ana, scopes('datasets/train', 'datasets/eval'), undefined);
    assert.deepEqual(decision.approval, { required: true, approvers: ['group:owners', 'user:root'], count: 2 });
    assert.equal(decision.explanation[0]?.approval, null);
    assert.deepEqual(decision.explanation[1]?.approval, decision.approval);
  });

  it('is not required when no rule used needs it', () => {
    assert.equal(evaluate(approving, ana, scopes('datasets/train'), undefined).approval.required, false);
  });

  it('from several rules: approvers united, the largest count', () => {
    const decision = evaluate(approving, ana, scopes('datasets/eval', 'datasets/pii'), undefined);
    assert.deepEqual(decision.approval, { required: true, approvers: ['group:owners', 'user:root', 'user:dpo'], count: 2 });
  });
});

describe('explanation', () => {
  it('says for each scope which rule allowed it and why each other rule did not', () => {
    const explained: Policy = {
      rules: [
        rule({ name: 'bo-only', subjects: ['user:bo'], scopes: ['datasets/**'] }),
        rule({ name: 'write-only', subjects: ['user:ana'], actions: ['write'], scopes: ['datasets/**'] }),
        rule({ name: 'eval-only', subjects: ['user:ana'], scopes: ['datasets/eval/**'] }),
        rule({ name: 'short', subjects: ['user:ana'], scopes: ['datasets/**'], maxTtlSeconds: 600 }),
        rule({ name: 'train', subjects: ['user:ana'], scopes: ['datasets/train/**'] }),
        rule({ name: 'also-train', subjects: ['user:ana'], scopes: ['datasets/**'] }),
      ],
    };
    const decision = decide(explained, ana, scopes('datasets/train'), 1800);
    assert.deepEqual(decision.explanation, [
      {
        scope: 'datasets/train',
        allowed: true,
        rule: 'train',
        deniedBy: null,
        approval: null,
        notMatched: [
          { rule: 'bo-only', kind: 'allow', why: 'subject did not match' },
          { rule: 'write-only', kind: 'allow', why: 'action read not listed' },
          { rule: 'eval-only', kind: 'allow', why: 'pattern did not match' },
          { rule: 'short', kind: 'allow', why: 'ttl 30m over max 10m' },
          { rule: 'also-train', kind: 'allow', why: 'an earlier rule matched' },
        ],
      },
    ]);
    assert.equal(decision.refusal, null);
  });

  it('a refused decision keeps its explanation and says why', () => {
    const decision = decide(policy, ana, scopes('datasets/eval'), undefined);
    assert.equal(decision.allowed, false);
    assert.equal(decision.ttlSeconds, null);
    assert.equal(decision.refusal?.code, 'policy_denied');
    assert.deepEqual(decision.explanation[0]?.notMatched, [
      { rule: 'train-only', kind: 'allow', why: 'pattern did not match' },
      { rule: 'admin', kind: 'allow', why: 'subject did not match' },
    ]);
  });
});

describe('patternReaches', () => {
  it('is true for the pattern’s matches and for anything that contains one', () => {
    assert.equal(patternReaches('datasets/pii/**', 'datasets'), true);
    assert.equal(patternReaches('datasets/pii/**', 'datasets/pii/a/b'), true);
    assert.equal(patternReaches('datasets/*/secret.csv', 'datasets/x'), true);
    assert.equal(patternReaches('datasets/pii/**', 'datasets/train'), false);
    assert.equal(patternReaches('datasets/*/secret.csv', 'datasets/x/other.csv'), false);
  });
});
