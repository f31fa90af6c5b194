import { formatDuration } from '../../core/duration.ts';
import { DeniedError, UsageError } from '../../core/errors.ts';
import { formatScope, globMatches, type Scope, scopeTarget } from '../../core/scope.ts';
import type { Approval, DenyRule, PolicyRule } from '../config.ts';

/** What evaluation reads from broker.yaml's policy section (docs/policy.md). */
export type Policy = {
  rules: readonly PolicyRule[];
  deny?: readonly DenyRule[];
  groups?: Readonly<Record<string, readonly string[]>>;
};

/**
 * Who is asking. `groups` come from policy.groups (resolved here too, so a caller may leave them
 * out); `claims` are a CI identity's verified OIDC token claims, matched by claim rules;
 * `sessionSecondsLeft` is how long that CI identity's session still lasts: no TTL is longer (a grant
 * that waits for approval counts it from the approval, so it can end after the session: docs/ci.md).
 */
export type Principal = {
  subject: string;
  groups?: readonly string[];
  claims?: Readonly<Record<string, unknown>>;
  sessionSecondsLeft?: number;
};

/** Why a rule played no part for a scope: the explanation a data owner reads. */
export type RuleMiss = { rule: string; kind: 'allow' | 'deny'; why: string };

export type ScopeExplanation = {
  scope: string;
  allowed: boolean;
  /** The allow rule that grants this scope; null when none does. */
  rule: string | null;
  /** The deny rule that refused it, with its reason; null when none did. */
  deniedBy: { rule: string; reason: string } | null;
  /** Set when the allow rule used needs approval. */
  approval: Approval | null;
  notMatched: RuleMiss[];
};

export type Refusal = { code: 'policy_denied' | 'ttl_too_long'; message: string; hint: string };

export type Decision = {
  subject: string;
  allowed: boolean;
  /** The TTL the grant gets, in seconds; null when refused. */
  ttlSeconds: number | null;
  /** The strictest maximum among the rules used; null when refused. */
  maxTtlSeconds: number | null;
  /**
   * What must happen before the grant is issued. With several rules needing approval, each
   * scope's `approval` says what its rule needs; this summary unions approvers and takes the
   * largest count.
   */
  approval: Approval;
  explanation: ScopeExplanation[];
  refusal: Refusal | null;
};

export type AllowedDecision = Decision & { allowed: true; ttlSeconds: number; maxTtlSeconds: number };

const NO_APPROVAL: Approval = { required: false, approvers: [], count: 0 };

/** The groups of policy.groups that list this subject, plus any the caller already knew. */
export function groupsOf(policy: Policy, principal: Principal): string[] {
  const listed = Object.entries(policy.groups ?? {})
    .filter(([, members]) => members.includes(principal.subject))
    .map(([name]) => name);
  return [...new Set([...(principal.groups ?? []), ...listed])];
}

/**
 * A `ci:` subject pattern against a CI session's subject: `**` matches anything, `*` anything but
 * `/`, so `ci:**` is every CI job and `ci:github:acme/*@refs/heads/main` every acme repository's main.
 */
export function subjectGlobMatches(pattern: string, subject: string): boolean {
  const source = pattern
    .split('**')
    .map((part) =>
      part
        .split('*')
        .map((text) => text.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
        .join('[^/]*'),
    )
    .join('.*');
  return new RegExp(`^${source}$`).test(subject);
}

/** Why a rule's who-part (subjects and claims) does not match; undefined when it does. */
function whoMismatch(
  rule: { subjects: readonly string[]; claims: Readonly<Record<string, string>> },
  principal: Principal,
  groups: string[],
) {
  if (rule.subjects.length > 0) {
    const matches = rule.subjects.some(
      (subject) =>
        subject === principal.subject ||
        (subject.startsWith('group:') && groups.includes(subject.slice('group:'.length))) ||
        (subject.startsWith('ci:') && principal.subject.startsWith('ci:') && subjectGlobMatches(subject, principal.subject)),
    );
    if (!matches) return 'subject did not match';
  }
  const failed = Object.entries(rule.claims).filter(([claim, pattern]) => {
    const value = principal.claims?.[claim];
    const text = typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? String(value) : undefined;
    return text === undefined || !globMatches(pattern, text);
  });
  if (failed.length > 0) return `claims did not match (${failed.map(([claim]) => claim).join(', ')})`;
  return undefined;
}

/**
 * True when the deny pattern matches the target or anything under it: a request for `datasets`
 * would reach `datasets/pii/x`, so `deny datasets/pii/**` must refuse it too.
 */
export function patternReaches(pattern: string, target: string): boolean {
  return reaches(pattern.split('/'), target.split('/'));
}

function reaches(pattern: string[], target: string[]): boolean {
  if (target.length === 0) return true;
  if (pattern.length === 0) return false;
  const [head, ...rest] = pattern;
  if (head === '**') {
    for (let skip = 0; skip <= target.length; skip++) if (reaches(rest, target.slice(skip))) return true;
    return false;
  }
  return globMatches(head ?? '', target[0] ?? '') && reaches(rest, target.slice(1));
}

type ScopeOutcome = ScopeExplanation & { ruleUsed?: PolicyRule; capSeconds?: number };

function explainScope(
  policy: Policy,
  principal: Principal,
  groups: string[],
  scope: Scope,
  requestedTtl: number | undefined,
): ScopeOutcome {
  const target = scopeTarget(scope);
  const notMatched: RuleMiss[] = [];
  let deniedBy: ScopeExplanation['deniedBy'] = null;
  for (const rule of policy.deny ?? []) {
    const why =
      whoMismatch(rule, principal, groups) ??
      (rule.actions.length > 0 && !rule.actions.includes(scope.action) ? `action ${scope.action} not listed` : undefined) ??
      (rule.scopes.some((pattern) => patternReaches(pattern, target)) ? undefined : 'pattern did not match');
    if (why === undefined && deniedBy === null) deniedBy = { rule: rule.name, reason: rule.reason };
    else notMatched.push({ rule: rule.name, kind: 'deny', why: why ?? 'an earlier deny rule matched' });
  }
  let used: PolicyRule | undefined;
  let capSeconds: number | undefined;
  for (const rule of policy.rules) {
    const why =
      whoMismatch(rule, principal, groups) ??
      (rule.actions.includes(scope.action) ? undefined : `action ${scope.action} not listed`) ??
      (rule.scopes.some((pattern) => globMatches(pattern, target)) ? undefined : 'pattern did not match');
    if (why !== undefined) {
      notMatched.push({ rule: rule.name, kind: 'allow', why });
      continue;
    }
    capSeconds = Math.max(capSeconds ?? 0, rule.maxTtlSeconds);
    if (requestedTtl !== undefined && requestedTtl > rule.maxTtlSeconds) {
      notMatched.push({
        rule: rule.name,
        kind: 'allow',
        why: `ttl ${formatDuration(requestedTtl)} over max ${formatDuration(rule.maxTtlSeconds)}`,
      });
    } else if (used !== undefined) {
      notMatched.push({ rule: rule.name, kind: 'allow', why: 'an earlier rule matched' });
    } else {
      used = rule;
    }
  }
  const allowed = deniedBy === null && used !== undefined;
  return {
    scope: formatScope(scope),
    allowed,
    rule: deniedBy === null ? (used?.name ?? null) : null,
    deniedBy,
    approval: allowed && used?.approval?.required ? used.approval : null,
    notMatched,
    ...(used && deniedBy === null ? { ruleUsed: used } : {}),
    ...(capSeconds === undefined ? {} : { capSeconds }),
  };
}

function refusalFor(
  principal: Principal,
  scopes: readonly Scope[],
  outcomes: ScopeOutcome[],
  requestedTtl: number | undefined,
): Refusal | null {
  const denied = outcomes.findIndex((outcome) => outcome.deniedBy !== null);
  if (denied !== -1) {
    const { deniedBy, scope } = outcomes[denied] as ScopeOutcome;
    return {
      code: 'policy_denied',
      message: `deny rule "${deniedBy?.rule}" refuses ${scope} to ${principal.subject}: ${deniedBy?.reason}`,
      hint: 'deny rules win over any allow; ask the data owner who wrote it',
    };
  }
  const uncovered = outcomes.findIndex((outcome) => outcome.capSeconds === undefined);
  if (uncovered !== -1) {
    const scope = scopes[uncovered] as Scope;
    return {
      code: 'policy_denied',
      message: `no policy rule lets ${principal.subject} ${scope.action} ${scopeTarget(scope)}`,
      hint: 'ask a data owner to extend the broker policy, or request a narrower scope',
    };
  }
  if (outcomes.some((outcome) => outcome.ruleUsed === undefined) && requestedTtl !== undefined) {
    const cap = Math.min(...outcomes.map((outcome) => outcome.capSeconds ?? 0));
    return {
      code: 'ttl_too_long',
      message: `ttl ${formatDuration(requestedTtl)} is longer than the ${formatDuration(cap)} the policy allows for this scope`,
      hint: `ask for --ttl ${formatDuration(cap)} or less`,
    };
  }
  return null;
}

/** How long the CI session behind the request still lasts, in whole seconds (at least 1); Infinity for API tokens. */
function sessionLeft(principal: Principal): number {
  return principal.sessionSecondsLeft === undefined ? Number.POSITIVE_INFINITY : Math.max(1, Math.floor(principal.sessionSecondsLeft));
}

/** A CI session's grants end with it at the latest: a longer TTL is refused up front, not lost mid-job. */
function sessionRefusal(principal: Principal, requestedTtl: number | undefined): Refusal | null {
  const left = sessionLeft(principal);
  if (requestedTtl === undefined || requestedTtl <= left) return null;
  return {
    code: 'ttl_too_long',
    message: `ttl ${formatDuration(requestedTtl)} is longer than the ${formatDuration(left)} left of ${principal.subject}'s CI session`,
    hint: `ask for --ttl ${formatDuration(left)} or less, or raise the issuer's sessionTtl (oidc.issuers in broker.yaml)`,
  };
}

function approvalOf(outcomes: ScopeOutcome[]): Approval {
  const needed = outcomes.flatMap((outcome) => (outcome.approval ? [outcome.approval] : []));
  if (needed.length === 0) return NO_APPROVAL;
  return {
    required: true,
    approvers: [...new Set(needed.flatMap((approval) => approval.approvers))],
    count: Math.max(...needed.map((approval) => approval.count)),
  };
}

/**
 * Decides a request and explains it, without throwing: every scope must be allowed by some rule
 * for this principal and refused by no deny rule, and the TTL must fit under the maximum of a
 * matching rule for every scope. The first matching rule (in file order) is the one used.
 */
export function decide(policy: Policy, principal: Principal, scopes: readonly Scope[], requestedTtlSeconds: number | undefined): Decision {
  const groups = groupsOf(policy, principal);
  const outcomes = scopes.map((scope) => explainScope(policy, principal, groups, scope, requestedTtlSeconds));
  const refusal = refusalFor(principal, scopes, outcomes, requestedTtlSeconds) ?? sessionRefusal(principal, requestedTtlSeconds);
  const used = outcomes.flatMap((outcome) => (outcome.ruleUsed ? [outcome.ruleUsed] : []));
  const explanation = outcomes.map(({ ruleUsed: _rule, capSeconds: _cap, ...shown }) => shown);
  if (refusal)
    return {
      subject: principal.subject,
      allowed: false,
      ttlSeconds: null,
      maxTtlSeconds: null,
      approval: NO_APPROVAL,
      explanation,
      refusal,
    };
  return {
    subject: principal.subject,
    allowed: true,
    ttlSeconds: requestedTtlSeconds ?? Math.min(...used.map((rule) => rule.defaultTtlSeconds), sessionLeft(principal)),
    maxTtlSeconds: Math.min(...used.map((rule) => rule.maxTtlSeconds)),
    approval: approvalOf(outcomes),
    explanation,
    refusal: null,
  };
}

/** The broker's view of `decide`: a refusal is the error the requester gets (policy_denied: exit 4; ttl_too_long: exit 2). */
export function evaluate(
  policy: Policy,
  principal: Principal,
  scopes: readonly Scope[],
  requestedTtlSeconds: number | undefined,
): AllowedDecision {
  const decision = decide(policy, principal, scopes, requestedTtlSeconds);
  if (decision.refusal) {
    const { code, message, hint } = decision.refusal;
    throw code === 'ttl_too_long' ? new UsageError(message, { code, hint }) : new DeniedError(message, { code, hint });
  }
  return decision as AllowedDecision;
}

/** "2 of user:bo, group:owners": who can approve, for messages and `jit policy explain`. */
export function describeApproval(approval: Approval): string {
  return `${approval.count} of ${approval.approvers.join(', ')}`;
}
