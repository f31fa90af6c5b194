import type { CommandDefinition } from '../command.ts';
import { reviewTable } from '../review.ts';

export const approvals: CommandDefinition = {
  path: 'approvals',
  summary: 'list the pending requests you may approve or deny (approver role)',
  async handler(_input, ctx) {
    const { client } = await ctx.session();
    const { grants } = await ctx.out.during('asking for the requests you may review', () => client.reviewable());
    return { data: { grants }, human: grants.length === 0 ? 'No requests wait for your review.' : reviewTable(grants) };
  },
};
