import { setTimeout as sleep } from 'node:timers/promises';
import { JitError } from '../core/errors.ts';
import type { Context } from './context.ts';

/** One row of a watched list: what tells a change (state, time-left bucket) and the row's JSON form. */
export type WatchedRow = { id: string; state: string; timeLeft: string; data: unknown };

/** What one look at the list gives: its rows and its human rendering (a table, or a line saying it is empty). */
export type Snapshot = { rows: WatchedRow[]; human: string };

/** One line of `--watch --json` output (docs/cli.md#--watch). */
export type WatchChange = {
  at: string;
  change: 'added' | 'changed' | 'removed';
  id: string;
  state: string;
  timeLeft: string;
  grant: unknown;
};

/**
 * Looks at a list every `intervalMs` until Ctrl-C (SIGINT), SIGTERM, or stdout's reader going
 * away. On a terminal it redraws the list in place under a header; otherwise (or with --json) it
 * prints one JSON line per row that appeared, changed state or time-left bucket, or went away.
 * A failed first look is the command's error; a later one is said (in the frame, or on stderr)
 * and the watch goes on.
 */
export async function watchList(
  ctx: Context,
  options: { title: string; intervalMs: number; snapshot: () => Promise<Snapshot> },
): Promise<void> {
  const { out } = ctx;
  let stopped = false;
  let wake: () => void = () => {};
  const stopping = new Promise<void>((resolve) => {
    wake = resolve;
  });
  const stop = () => {
    stopped = true;
    wake();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  void out.stdoutClosed().then(stop);

  const live = out.liveTerminal ? out.redraw() : undefined;
  let previous = new Map<string, WatchedRow>();
  let lastHuman = '';
  let failing = false;
  try {
    for (let first = true; !stopped; first = false) {
      let snapshot: Snapshot | undefined;
      try {
        const looking = options.snapshot();
        // Stopped mid-look: the look's late failure is of no interest.
        looking.catch(() => {});
        snapshot = await Promise.race([looking, stopping.then(() => undefined)]);
        failing = false;
      } catch (error) {
        if (first || !(error instanceof JitError)) throw error;
        const message = `${error.message}${error.hint ? `; ${error.hint}` : ''}; trying again every ${options.intervalMs / 1000}s`;
        if (live) live.frame(`${header(options)}\n${out.color.yellow('jit: warning:')} ${message}\n\n${lastHuman}`);
        else if (!failing) out.warn(message);
        failing = true;
      }
      if (snapshot && !stopped) {
        lastHuman = snapshot.human;
        if (live) live.frame(`${header(options)}\n\n${snapshot.human}`);
        else for (const change of changes(previous, snapshot.rows, new Date().toISOString())) out.line(change);
        previous = new Map(snapshot.rows.map((row) => [row.id, row]));
      }
      if (!stopped) await Promise.race([sleep(options.intervalMs), stopping]);
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    live?.close();
  }
}

function header(options: { title: string; intervalMs: number }): string {
  const time = new Date().toTimeString().slice(0, 8);
  return `Every ${options.intervalMs / 1000}s: ${options.title} (Ctrl-C to stop)  ${time}`;
}

/** The rows that appeared, changed state or time-left bucket, or went away since the last look, in list order. */
export function changes(previous: Map<string, WatchedRow>, rows: WatchedRow[], at: string): WatchChange[] {
  const line = (change: WatchChange['change'], row: WatchedRow): WatchChange => ({
    at,
    change,
    id: row.id,
    state: row.state,
    timeLeft: row.timeLeft,
    grant: row.data,
  });
  const current = new Set(rows.map((row) => row.id));
  const result: WatchChange[] = [];
  for (const row of rows) {
    const before = previous.get(row.id);
    if (!before) result.push(line('added', row));
    else if (before.state !== row.state || before.timeLeft !== row.timeLeft) result.push(line('changed', row));
  }
  for (const [id, row] of previous) if (!current.has(id)) result.push(line('removed', row));
  return result;
}
