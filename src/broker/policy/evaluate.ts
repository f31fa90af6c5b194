import { formatDuration } from '../../core/duration.ts';
import { DeniedError, UsageError } from '../../core/errors.ts';
import { formatScope, globMatches, type Scope, scopeTarget } from '../../core/scope.ts';
import type { PolicyRule } from '../config.ts';

export type Decision = {
  /** The TTL the grant gets, in seconds. */
  ttlSeconds: number;
  /** Per scope, the rule that allowed it: the explanation kept with the grant and in the audit log. */
  explanation: { scope: string; rule: string }[];
};

/**
 * Decides a request: every scope must be allowed by some rule for this subject, and the TTL must
 * fit under the strictest maximum among the rules used. No rule, no grant.
 */
export function evaluate(
  rules: readonly PolicyRule[],
  subject: string,
  scopes: readonly Scope[],
  requestedTtlSeconds: number | undefined,
): Decision {
  const used: { scope: Scope; rule: PolicyRule }[] = [];
  for (const scope of scopes) {
    const rule = rules.find(
      (candidate) =>
        candidate.subjects.includes(subject) &&
        candidate.actions.includes(scope.action) &&
        candidate.scopes.some((pattern) => globMatches(pattern, scopeTarget(scope))),
    );
    if (!rule) {
      throw new DeniedError(`no policy rule lets ${subject} ${scope.action} ${scopeTarget(scope)}`, {
        code: 'policy_denied',
        hint: 'ask a data owner to extend the broker policy, or request a narrower scope',
      });
    }
    used.push({ scope, rule });
  }
  const maxTtl = Math.min(...used.map(({ rule }) => rule.maxTtlSeconds));
  const ttlSeconds = requestedTtlSeconds ?? Math.min(...used.map(({ rule }) => rule.defaultTtlSeconds));
  if (ttlSeconds > maxTtl) {
    throw new UsageError(
      `ttl ${formatDuration(ttlSeconds)} is longer than the ${formatDuration(maxTtl)} the policy allows for this scope`,
      {
        code: 'ttl_too_long',
        hint: `ask for --ttl ${formatDuration(maxTtl)} or less`,
      },
    );
  }
  return { ttlSeconds, explanation: used.map(({ scope, rule }) => ({ scope: formatScope(scope), rule: rule.name })) };
}
