import type { GrantView } from './grant.ts';

/** Who can still approve a pending grant, for people: "one of group:data-owners; and 2 of user:dana, user:eli". */
export function describeApproval(grant: Pick<GrantView, 'approval'>): string {
  const requirements = grant.approval?.requirements ?? [];
  if (requirements.length === 0) return 'nobody (it needs no approval)';
  return requirements
    .map((requirement) => `${requirement.count === 1 ? 'one' : requirement.count} of ${requirement.approvers.join(', ')}`)
    .join('; and ');
}
