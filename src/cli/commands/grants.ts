import { wrapperGone } from '../../client/release.ts';
import type { CommandDefinition } from '../command.ts';
import { renderTable } from '../table.ts';

export const grants: CommandDefinition = {
  path: 'grants',
  summary: 'list the grants this machine holds (from the local index; no secrets, works offline)',
  async handler(_input, ctx) {
    const rows = ctx.config.grants().map((grant) => ({
      ...grant,
      wrapperAlive: !wrapperGone(grant),
    }));
    if (rows.length === 0) return { data: { grants: [] }, human: 'No live grants on this machine.' };
    const table = [
      ['ID', 'STATE', 'SCOPES', 'EXPIRES', 'PID', 'COMMAND'],
      ...rows.map((grant) => [
        grant.id,
        grant.state,
        grant.scopes.join(','),
        grant.expiresAt ?? '-',
        grant.pid === null ? '-' : String(grant.pid),
        grant.command,
      ]),
    ];
    return { data: { grants: rows }, human: renderTable(table) };
  },
};
