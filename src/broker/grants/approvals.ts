import type { Decision, Policy } from '../policy/evaluate.ts';
import { groupsOf } from '../policy/evaluate.ts';
import type { ApprovalRecord } from '../store/store.ts';

/**
 * What one approval rule asks of a pending grant: `count` distinct approvers among `approvers`
 * (user:NAME, group:NAME), never the requester. A grant whose scopes fall under rules with
 * different approvers has one requirement per rule, and is approved when all are met.
 */
export type Requirement = { scopes: string[]; approvers: string[]; count: number };

/** Where a requirement stands: who of its approvers approved so far. */
export type RequirementStatus = Requirement & { approvedBy: string[] };

/** The approval requirements the policy decision put on a grant, one per distinct rule. */
export function requirementsOf(decision: Pick<Decision, 'explanation'>): Requirement[] {
  const byRule = new Map<string, Requirement>();
  for (const scope of decision.explanation ?? []) {
    if (!scope.approval?.required) continue;
    const key = `${scope.rule}\u0000${scope.approval.approvers.join(',')}\u0000${scope.approval.count}`;
    const requirement = byRule.get(key) ?? { scopes: [], approvers: [...scope.approval.approvers], count: scope.approval.count };
    requirement.scopes.push(scope.scope);
    byRule.set(key, requirement);
  }
  return [...byRule.values()];
}

/** Whether `reviewer` is one of a requirement's approvers, by name or through policy.groups. */
export function isApproverFor(requirement: Requirement, reviewer: string, policy: Policy): boolean {
  const groups = groupsOf(policy, { subject: reviewer });
  return requirement.approvers.some(
    (approver) => approver === reviewer || (approver.startsWith('group:') && groups.includes(approver.slice('group:'.length))),
  );
}

/** Whether `reviewer` may approve or deny a grant `requester` asked for: an approver of some requirement, and not the requester. */
export function mayReview(requirements: readonly Requirement[], reviewer: string, requester: string, policy: Policy): boolean {
  return reviewer !== requester && requirements.some((requirement) => isApproverFor(requirement, reviewer, policy));
}

/** Each requirement with the approvals that count for it (its approvers', never the requester's). */
export function statusOf(
  requirements: readonly Requirement[],
  verdicts: readonly ApprovalRecord[],
  requester: string,
  policy: Policy,
): RequirementStatus[] {
  return requirements.map((requirement) => ({
    ...requirement,
    approvedBy: verdicts
      .filter(
        (verdict) =>
          verdict.verdict === 'approve' && verdict.approver !== requester && isApproverFor(requirement, verdict.approver, policy),
      )
      .map((verdict) => verdict.approver),
  }));
}

export function allMet(status: readonly RequirementStatus[]): boolean {
  return status.every((requirement) => requirement.approvedBy.length >= requirement.count);
}
