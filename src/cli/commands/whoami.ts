import type { CommandDefinition } from '../command.ts';
import { renderTable } from '../table.ts';

export const whoami: CommandDefinition = {
  path: 'whoami',
  summary: 'show which broker and profile are in use, and the subject, roles and token id the broker sees',
  async handler(_input, ctx) {
    const { client, brokerUrl, profile, auth } = await ctx.session();
    const { subject, roles, tokenId } = await client.whoami();
    const data = { brokerUrl, profile, auth, subject, roles, tokenId };
    const human = renderTable([
      ['broker', brokerUrl],
      ['profile', auth === 'env' ? `${profile} (token from JIT_TOKEN)` : profile],
      ['subject', subject],
      ['roles', roles.join(', ')],
      ['token id', tokenId],
    ]);
    return { data, human };
  },
};
