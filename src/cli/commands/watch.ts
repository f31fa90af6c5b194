import { setTimeout as sleep } from 'node:timers/promises';
import { readEvents } from '../../client/sse.ts';
import type { AuditRecord } from '../../core/audit.ts';
import { BrokerUnreachableError, UsageError } from '../../core/errors.ts';
import { filtersFrom, recordLine } from '../audit-render.ts';
import type { CommandDefinition } from '../command.ts';

/** Waits between reconnects grow to this. */
const MAX_RECONNECT_MS = 10_000;

export const watch: CommandDefinition = {
  path: 'watch',
  summary: 'follow grants and data accesses live, across all replicas, coloured by outcome (Ctrl-C stops; --json prints NDJSON)',
  define: (command) =>
    command
      .option('--grant <id>', "one grant's records")
      .option('--subject <subject>', "records about a subject's grants")
      .option('--actor <actor>', 'records of what this actor did')
      .option('--scope <scope>', 'records whose scope starts with this (datasets/train)')
      .option('--action <action>', 'an action (grant.revoked), or a family (data.*, alert.*)')
      .option('--from <seq>', 'start after this record seq instead of now (0: the whole trail first)'),
  async handler({ options }, ctx) {
    const from = options.from === undefined ? undefined : Number(options.from);
    if (from !== undefined && (!Number.isSafeInteger(from) || from < 0)) {
      throw new UsageError(`--from "${String(options.from)}" is not a record seq`, { hint: 'e.g. --from 0 for the whole trail' });
    }
    const { client, brokerUrl } = await ctx.session();
    const filters = filtersFrom(options);
    const stop = new AbortController();
    const onSignal = () => stop.abort();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    void ctx.out.stdoutClosed().then(onSignal);
    let last = from;
    let failures = 0;
    let connected = false;
    try {
      while (!stop.signal.aborted) {
        try {
          const body = await client.openAuditStream(
            { ...filters, after: last === undefined ? undefined : String(last) },
            last,
            stop.signal,
          );
          if (connected || failures > 0) ctx.out.notice(`reconnected to ${brokerUrl}, resuming after record ${last ?? 'now'}`);
          else ctx.out.notice(`watching ${brokerUrl} (Ctrl-C stops)`);
          connected = true;
          failures = 0;
          for await (const event of readEvents(body)) {
            // The stream's resume point, also where records the filters passed over ended.
            if (event.event === 'cursor' && event.id !== undefined && /^\d+$/.test(event.id)) last = Number(event.id);
            if (event.event !== 'audit') continue;
            const record = JSON.parse(event.data) as AuditRecord;
            last = record.seq;
            if (ctx.out.json) ctx.out.line(record);
            else ctx.out.result(undefined, recordLine(record, ctx.out.color));
          }
        } catch (error) {
          if (stop.signal.aborted) break;
          // Refusals (not logged in, no role) end the watch; a lost connection is retried.
          if (!(error instanceof BrokerUnreachableError) && !(error instanceof TypeError) && !isReset(error)) throw error;
          if (!connected && failures === 0 && error instanceof BrokerUnreachableError) throw error;
          failures += 1;
        }
        if (stop.signal.aborted) break;
        const wait = Math.min(MAX_RECONNECT_MS, 500 * 2 ** Math.min(failures, 5));
        ctx.out.notice(`lost the stream from ${brokerUrl}; reconnecting in ${(wait / 1000).toFixed(1)} s`);
        await sleep(wait, undefined, { signal: stop.signal }).catch(() => undefined);
      }
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    return {};
  },
};

function isReset(error: unknown): boolean {
  const code = (error as { code?: string; cause?: { code?: string } }).cause?.code ?? (error as { code?: string }).code;
  return code === 'ECONNRESET' || code === 'UND_ERR_SOCKET' || code === 'ABORT_ERR' || code === 'EPIPE';
}
