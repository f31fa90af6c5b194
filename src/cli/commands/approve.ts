import { describeMissingApprovals } from '../../core/approval.ts';
import type { CommandDefinition } from '../command.ts';
import { approvalProgressText, grantToReview } from '../review.ts';

export const approve: CommandDefinition = {
  path: 'approve',
  summary: 'approve a pending request (with no id on a terminal: pick one)',
  define: (command) =>
    command
      .argument('[id]', 'the grant id; left out on a terminal, pick from the requests waiting for you')
      .option('--reason <text>', 'why, kept in the audit trail'),
  async handler({ args, options }, ctx) {
    const { client } = await ctx.session();
    const id = await grantToReview(ctx, client, args[0], 'approve');
    if (id === undefined) return { data: { grants: [] }, human: 'No requests wait for your review.' };
    const grant = await ctx.out.during(`approving ${id}`, () =>
      client.approve(id, options.reason === undefined ? undefined : String(options.reason)),
    );
    const human =
      grant.state === 'active'
        ? `${id} approved: ${grant.subject} now has ${grant.scopes.join(', ')} until ${grant.expiresAt}`
        : `${id} approved by you (${approvalProgressText(grant)}); it still needs ${describeMissingApprovals(grant)}`;
    return { data: grant, human };
  },
};
