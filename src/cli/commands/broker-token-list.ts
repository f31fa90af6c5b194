import type { CommandDefinition } from '../command.ts';
import { renderTable } from '../table.ts';
import { dirOption, withTokenAdmin } from '../token-admin.ts';

export const brokerTokenList: CommandDefinition = {
  path: 'broker token list',
  summary: "list the broker's API tokens, revoked ones too (ids, subjects, roles; never a token)",
  define: (command) => dirOption(command),
  async handler({ options }, ctx) {
    const tokens = await withTokenAdmin(options, ctx, (admin) => admin.list());
    const table = [
      ['TOKEN ID', 'SUBJECT', 'ROLES', 'STATE', 'CREATED', 'BY', 'LABEL'],
      ...tokens.map((token) => [
        token.tokenId,
        token.subject,
        token.roles.join(','),
        token.revokedAt === null ? 'active' : `revoked ${token.revokedAt}`,
        token.createdAt,
        token.createdBy ?? '-',
        token.label ?? '',
      ]),
    ];
    return { data: { tokens }, human: tokens.length === 0 ? 'No tokens.' : renderTable(table) };
  },
};
