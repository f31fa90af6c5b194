import type { GrantView } from './grant.ts';

/** Approval requirements as people read them: "one of group:data-owners; and 2 of user:dana, user:eli". */
export function describeRequirements(requirements: readonly { approvers: readonly string[]; count: number }[]): string {
  return requirements
    .map((requirement) => `${requirement.count === 1 ? 'one' : requirement.count} of ${requirement.approvers.join(', ')}`)
    .join('; and ');
}

/** Who must approve a pending grant, for people (describeRequirements of its view). */
export function describeApproval(grant: Pick<GrantView, 'approval'>): string {
  const requirements = grant.approval?.requirements ?? [];
  return requirements.length === 0 ? 'nobody (it needs no approval)' : describeRequirements(requirements);
}

/** "1 of 2": approvals given so far against approvals needed, over all of a grant's requirements. */
export function approvalProgress(grant: Pick<GrantView, 'approval'>): { given: number; needed: number } {
  const requirements = grant.approval?.requirements ?? [];
  return {
    given: requirements.reduce((sum, requirement) => sum + Math.min(requirement.count, requirement.approvedBy.length), 0),
    needed: requirements.reduce((sum, requirement) => sum + requirement.count, 0),
  };
}

/** What is still missing: "1 more of group:data-owners" for each requirement not yet met. */
export function describeMissingApprovals(grant: Pick<GrantView, 'approval'>): string {
  return (grant.approval?.requirements ?? [])
    .filter((requirement) => requirement.approvedBy.length < requirement.count)
    .map((requirement) => `${requirement.count - requirement.approvedBy.length} more of ${requirement.approvers.join(', ')}`)
    .join('; and ');
}
