import { wrapperGone } from '../../client/release.ts';
import { formatDuration } from '../../core/duration.ts';
import type { GrantView } from '../../core/grant.ts';
import type { CommandDefinition } from '../command.ts';
import type { Context } from '../context.ts';
import { renderTable } from '../table.ts';

export const grants: CommandDefinition = {
  path: 'grants',
  summary: 'list the grants this machine holds (from the local index; no secrets, works offline)',
  define: (command) => command.option('--remote', "list the broker's view of your grants, ended ones too, instead of this machine's index"),
  async handler({ options }, ctx) {
    if (options.remote) return remoteGrants(ctx);
    const rows = ctx.config.grants().map((grant) => ({
      ...grant,
      wrapperAlive: !wrapperGone(grant),
    }));
    if (rows.length === 0) return { data: { grants: [] }, human: 'No live grants on this machine.' };
    const now = Date.now();
    const table = [
      ['ID', 'STATE', 'SCOPES', 'EXPIRES', 'TIME LEFT', 'PID', 'COMMAND'],
      ...rows.map((grant) => [
        grant.id,
        highlightState(grant.state, ctx),
        grant.scopes.join(','),
        grant.expiresAt ?? '-',
        timeLeft(grant.expiresAt, now),
        grant.pid === null ? '-' : String(grant.pid),
        grant.command,
      ]),
    ];
    return { data: { grants: rows }, human: renderTable(table) };
  },
};

async function remoteGrants(ctx: Context) {
  const { client, brokerUrl } = await ctx.session();
  const { grants } = await client.listGrants();
  if (grants.length === 0) return { data: { grants }, human: `The broker at ${brokerUrl} has no grants of yours.` };
  const now = Date.now();
  const table = [
    ['ID', 'STATE', 'SCOPES', 'TIME LEFT', 'ENDED'],
    ...grants.map((grant) => [
      grant.id,
      highlightState(grant.state, ctx),
      grant.scopes.join(','),
      grant.endedAt === null ? timeLeft(grant.expiresAt, now) : '-',
      grant.endReason ?? '-',
    ]),
  ];
  return { data: { grants }, human: renderTable(table) };
}

/** States that need the user's attention stand out (colour only on a terminal; see Output). */
function highlightState(state: string, ctx: Context): string {
  const { color } = ctx.out;
  if (state === 'revoke-pending') return color.red(state);
  if (state === 'suspended') return color.yellow(state);
  if (state === 'pending') return color.cyan(state);
  return state;
}

/** Time until `expiresAt`, to the minute ("42m", "1h5m"; seconds under a minute); "-" when there is none or it has passed. */
function timeLeft(expiresAt: GrantView['expiresAt'], now: number): string {
  if (expiresAt === null) return '-';
  const seconds = Math.floor((Date.parse(expiresAt) - now) / 1000);
  if (!(seconds > 0)) return '-';
  return seconds < 60 ? `${seconds}s` : formatDuration(Math.floor(seconds / 60) * 60);
}
