import type { CommandDefinition } from '../command.ts';
import { renderTable } from '../table.ts';

export const whoami: CommandDefinition = {
  path: 'whoami',
  summary: 'show which broker and profile are in use, and the subject, roles and token id the broker sees',
  async handler(_input, ctx) {
    const { client, brokerUrl, profile, auth } = await ctx.session();
    const { subject, roles, tokenId, expiresAt } = await ctx.out.during(`asking ${brokerUrl}`, () => client.whoami());
    const data = { brokerUrl, profile, auth, subject, roles, tokenId, ...(expiresAt ? { expiresAt } : {}) };
    const via = { env: ' (token from JIT_TOKEN)', oidc: " (the CI job's OIDC identity)", profile: '' }[auth];
    const human = renderTable([
      ['broker', brokerUrl],
      ['profile', `${profile}${via}`],
      ['subject', subject],
      ['roles', roles.join(', ')],
      [auth === 'oidc' ? 'session id' : 'token id', tokenId],
      ...(expiresAt ? [['session ends', expiresAt]] : []),
    ]);
    return { data, human };
  },
};
