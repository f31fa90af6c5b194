import { wrapperGone } from '../../client/release.ts';
import { formatDuration, parseDuration } from '../../core/duration.ts';
import type { GrantView } from '../../core/grant.ts';
import type { CommandDefinition } from '../command.ts';
import type { Context } from '../context.ts';
import { renderTable } from '../table.ts';
import { type Snapshot, watchList } from '../watch.ts';

export const grants: CommandDefinition = {
  path: 'grants',
  summary: 'list the grants this machine holds (from the local index; no secrets, works offline)',
  define: (command) =>
    command
      .option('--remote', "list the broker's view of your grants, ended ones too, instead of this machine's index")
      .option('-w, --watch', 'keep looking: redraw the table in place on a terminal, else print a JSON line per change (Ctrl-C stops)')
      .option('--interval <duration>', 'with --watch: how often to look again, e.g. 5s', '2s'),
  async handler({ options }, ctx) {
    const look = options.remote ? () => remoteGrants(ctx) : async () => localGrants(ctx);
    if (!options.watch) {
      const { data, human } = await look();
      return { data, human };
    }
    const intervalMs = parseDuration(String(options.interval), '--interval') * 1000;
    await watchList(ctx, { title: `jit grants${options.remote ? ' --remote' : ''}`, intervalMs, snapshot: look });
    return {};
  },
};

type Listing = Snapshot & { data: { grants: unknown[] } };

function localGrants(ctx: Context): Listing {
  const grants = ctx.config.grants().map((grant) => ({ ...grant, wrapperAlive: !wrapperGone(grant) }));
  const now = Date.now();
  const rows = grants.map((grant) => ({ id: grant.id, state: grant.state, timeLeft: timeLeft(grant.expiresAt, now), data: grant }));
  if (grants.length === 0) return { data: { grants }, rows, human: 'No live grants on this machine.' };
  const table = [
    ['ID', 'STATE', 'SCOPES', 'EXPIRES', 'TIME LEFT', 'PID', 'COMMAND'],
    ...grants.map((grant, index) => [
      grant.id,
      highlightState(grant.state, ctx),
      grant.scopes.join(','),
      grant.expiresAt ?? '-',
      rows[index]?.timeLeft ?? '-',
      grant.pid === null ? '-' : String(grant.pid),
      grant.command,
    ]),
  ];
  return { data: { grants }, rows, human: renderTable(table) };
}

async function remoteGrants(ctx: Context): Promise<Listing> {
  const { client, brokerUrl } = await ctx.session();
  const { grants } = await ctx.out.during(`asking ${brokerUrl}`, () => client.listGrants());
  const now = Date.now();
  const rows = grants.map((grant) => ({
    id: grant.id,
    state: grant.state,
    timeLeft: grant.endedAt === null ? timeLeft(grant.expiresAt, now) : '-',
    data: grant,
  }));
  if (grants.length === 0) return { data: { grants }, rows, human: `The broker at ${brokerUrl} has no grants of yours.` };
  const table = [
    ['ID', 'STATE', 'SCOPES', 'TIME LEFT', 'ENDED'],
    ...grants.map((grant, index) => [
      grant.id,
      highlightState(grant.state, ctx),
      grant.scopes.join(','),
      rows[index]?.timeLeft ?? '-',
      grant.endReason ?? '-',
    ]),
  ];
  return { data: { grants }, rows, human: renderTable(table) };
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
