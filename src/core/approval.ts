import type { GrantView } from './grant.ts';

/** Who must approve a pending grant, for people: "one of group:data-owners; and 2 of user:dana, user:eli". */
export function describeApproval(grant: Pick<GrantView, 'approval'>): string {
  const requirements = grant.approval?.requirements ?? [];
  if (requirements.length === 0) return 'nobody (it needs no approval)';
  return requirements
    .map((requirement) => `${requirement.count === 1 ? 'one' : requirement.count} of ${requirement.approvers.join(', ')}`)
    .join('; and ');
}

/** What is still missing: "1 more of group:data-owners" for each requirement not yet met. */
export function describeMissingApprovals(grant: Pick<GrantView, 'approval'>): string {
  return (grant.approval?.requirements ?? [])
    .filter((requirement) => requirement.approvedBy.length < requirement.count)
    .map((requirement) => `${requirement.count - requirement.approvedBy.length} more of ${requirement.approvers.join(', ')}`)
    .join('; and ');
}
