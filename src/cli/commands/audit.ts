import { createPublicKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Option } from 'commander';
import type { AuditRecord, VerifyReport } from '../../core/audit.ts';
import { TamperedError, UsageError } from '../../core/errors.ts';
import { colourOutcome, filtersFrom, parseTime, summarize } from '../audit-render.ts';
import type { CommandDefinition, CommandResult } from '../command.ts';
import type { Context } from '../context.ts';
import { printable } from '../printable.ts';
import { renderTable } from '../table.ts';

const PAGE = 1000;

export const audit: CommandDefinition = {
  path: 'audit',
  summary: 'query the audit trail: who asked for what, what was decided, touched, revoked (auditor role, or your own records)',
  define: (command) =>
    command
      .option('--grant <id>', "one grant's records")
      .option('--subject <subject>', "records about a subject's grants and tokens (user:ana, ci:github:org/repo@refs/heads/main)")
      .option('--actor <actor>', 'records of what this actor did (a user, a CI identity, or system)')
      .option('--action <action>', 'an action (grant.revoked), or a family (data.*, alert.*)')
      .addOption(new Option('--outcome <outcome>', 'only this outcome').choices(['ok', 'pending', 'denied', 'error', 'alert']))
      .option('--scope <scope>', 'records whose scope starts with this (datasets/train)')
      .option('--since <time>', 'records at or after this: a date-time, or a duration ago (1h, 2d)')
      .option('--until <time>', 'records before this: a date-time, or a duration ago')
      .option('--after <seq>', 'records after this seq (the `next` cursor of a previous page)')
      .option('--limit <n>', 'records per page, at most 1000', '100')
      .option('--all', 'every matching record, page after page, not just the first page')
      .addOption(
        new Option(
          '--format <format>',
          'table (default), json (one document, as --json), or jsonl (a record per line; implies --all)',
        ).choices(['table', 'json', 'jsonl']),
      ),
  async handler({ options }, ctx) {
    const limit = Number(options.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > PAGE) {
      throw new UsageError(`--limit "${String(options.limit)}" is not a number from 1 to ${PAGE}`, { hint: 'e.g. --limit 500' });
    }
    const after = options.after === undefined ? undefined : Number(options.after);
    if (after !== undefined && (!Number.isSafeInteger(after) || after < 0)) {
      throw new UsageError(`--after "${String(options.after)}" is not a record seq`, { hint: 'pass the `next` of the previous page' });
    }
    const filters = {
      ...filtersFrom(options),
      outcome: typeof options.outcome === 'string' ? options.outcome : undefined,
      since: typeof options.since === 'string' ? parseTime(options.since, '--since') : undefined,
      until: typeof options.until === 'string' ? parseTime(options.until, '--until') : undefined,
    };
    const { client } = await ctx.session();
    const format = options.format ?? (ctx.options.json ? 'json' : 'table');
    if (format === 'jsonl') {
      // A stream: each page is printed as it arrives, so an export of millions of records never sits in memory.
      let cursor = after;
      for (;;) {
        const page = await client.queryAudit({ ...filters, after: cursor, limit: PAGE });
        for (const record of page.records) ctx.out.line(record);
        if (page.next === null) return {};
        cursor = page.next;
      }
    }
    const records: AuditRecord[] = [];
    let cursor = after;
    let next: number | null = null;
    do {
      const page = await client.queryAudit({ ...filters, after: cursor, limit: options.all ? PAGE : limit });
      records.push(...page.records);
      next = page.next;
      cursor = next ?? undefined;
    } while (options.all && next !== null);
    const data = { records, next };
    if (format === 'json') return { data: ctx.options.json ? data : undefined, human: JSON.stringify(data, null, 2) };
    return { data, human: auditTable(records, next, ctx) };
  },
};

function auditTable(records: AuditRecord[], next: number | null, ctx: Context): string {
  if (records.length === 0) return 'No audit records match.';
  const { color } = ctx.out;
  const table = renderTable([
    ['SEQ', 'TIME', 'ACTION', 'OUTCOME', 'ACTOR', 'GRANT', 'SCOPE', 'DETAILS'],
    ...records.map((record) => [
      String(record.seq),
      printable(record.at.replace('T', ' ').slice(0, 19)),
      printable(record.action),
      colourOutcome(printable(record.outcome), color),
      printable(record.actor ?? '-'),
      printable(record.grant ?? '-'),
      printable(record.scope ?? '-'),
      summarize(record),
    ]),
  ]);
  return next === null ? table : `${table}\n${color.dim(`more: jit audit --after ${next} (same filters), or --all`)}`;
}

export const auditVerify: CommandDefinition = {
  path: 'audit verify',
  summary: "re-compute the broker's audit hash chain and check its signed checkpoints; exit 10 if it was tampered with (auditor role)",
  define: (command) =>
    command
      .option('--file <path>', 'verify an exported copy instead (JSONL: a file sink, or jit audit --format jsonl), offline')
      .option('--public-key <path>', "with --file: the broker's audit public key (PEM; GET /v1/audit/key), else asked of the broker"),
  async handler({ options }, ctx) {
    if (typeof options.file === 'string') return verifyFile(options.file, options.publicKey, ctx);
    if (options.publicKey !== undefined)
      throw new UsageError('--public-key goes with --file', { hint: 'jit audit verify --file EXPORT.jsonl --public-key KEY.pem' });
    const { client, brokerUrl } = await ctx.session();
    const spinner = ctx.out.spinner('verifying the audit chain');
    let report: VerifyReport;
    try {
      report = await client.verifyAudit();
    } finally {
      spinner.stop();
    }
    if (report.ok) rollbackCheck(report, await headHash(ctx, client, report), ctx.config.verifiedHead(brokerUrl));
    if (!report.ok) {
      const problem = report.problem;
      throw new TamperedError(`the audit trail does not verify: ${problem?.message ?? 'unknown problem'}`, {
        code: `audit_${problem?.kind ?? 'tampered'}`.replaceAll('-', '_'),
        hint: `${report.records} records verify before it; restore the store from a backup or an export sink, and investigate who had write access to it`,
      });
    }
    if (report.head)
      ctx.config.setVerifiedHead(brokerUrl, { position: report.head.position, hash: report.head.hash, at: new Date().toISOString() });
    const checkpoint = report.checkpoint;
    const upTo = checkpoint
      ? `up to checkpoint ${checkpoint.position} (signed ${checkpoint.at} by key ${checkpoint.keyId})`
      : 'with no signed checkpoint yet';
    const after =
      checkpoint && report.records > checkpoint.position
        ? `; ${report.records - checkpoint.position} newer records are chained but not signed yet`
        : '';
    const unsealed = report.unsealed > 0 ? `; ${report.unsealed} records were still being sealed` : '';
    const rate = report.elapsedMs > 0 ? ` in ${(report.elapsedMs / 1000).toFixed(2)} s` : '';
    return { data: report, human: `${ctx.out.color.green('verified')} ${report.records} records ${upTo}${rate}${after}${unsealed}` };
  },
};

/** The hash the broker's chain has now at the position verified last time, if it is that long. */
async function headHash(ctx: Context, client: Awaited<ReturnType<Context['session']>>['client'], report: VerifyReport) {
  const { brokerUrl } = await ctx.session();
  const pinned = ctx.config.verifiedHead(brokerUrl);
  if (!pinned || pinned.position > report.records) return undefined;
  const page = await client.queryAudit({ after: pinned.position - 1, limit: 1 });
  return page.records[0]?.seq === pinned.position ? page.records[0].hash : undefined;
}

/**
 * What the broker alone cannot see: a chain cut back (records and their checkpoints deleted) or
 * replaced since this machine last verified it. The head verified last time must still be there.
 */
function rollbackCheck(
  report: VerifyReport,
  hashNow: string | undefined,
  pinned: { position: number; hash: string; at: string } | undefined,
): void {
  if (!pinned) return;
  if (report.records < pinned.position) {
    report.ok = false;
    report.problem = {
      kind: 'truncated',
      position: pinned.position,
      message: `the chain ends at record ${report.records}, but it reached record ${pinned.position} when verified here on ${pinned.at}: records were deleted`,
    };
  } else if (hashNow !== pinned.hash) {
    report.ok = false;
    report.problem = {
      kind: 'rewritten',
      position: pinned.position,
      message: `record ${pinned.position} is not the one verified here on ${pinned.at}: the chain was replaced`,
    };
  }
}

/**
 * Verifies an exported copy of the trail without the broker's store. The copy must carry at least
 * one checkpoint signed by the broker's key: that ties it to the broker. From genesis (a copy that
 * starts at record 1) or from its first signed checkpoint (a copy that starts mid-chain), each
 * record must hash from the one before, and every later checkpoint must be signed. What a copy
 * cannot show: records cut off after its last checkpoint (compare with the broker for that).
 */
async function verifyFile(file: string, keyFile: unknown, ctx: Context): Promise<CommandResult> {
  const { ChainVerifier } = await import('../../broker/audit/verify.ts');
  const { chainFieldsOf, checkpointSigned, keyIdOf } = await import('../../broker/audit/chain.ts');
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot read ${file}: ${error.code ?? error.message}`, {
      hint: 'pass an export: a file sink, or jit audit --format jsonl > FILE',
    });
  });
  const bySeq = new Map<number, { record: AuditRecord; text: string }>();
  for (const [index, line] of text.split('\n').entries()) {
    if (line.trim() === '') continue;
    let record: AuditRecord;
    try {
      record = JSON.parse(line) as AuditRecord;
    } catch {
      throw new UsageError(`${file}:${index + 1} is not a JSON record`, { hint: 'the copy is JSONL: one audit record per line' });
    }
    if (!Number.isSafeInteger(record.seq) || record.seq < 1) {
      throw new UsageError(`${file}:${index + 1} has no record seq`, { hint: 'the copy is JSONL: one audit record per line' });
    }
    // At-least-once delivery may repeat a batch: the same record again is fine, another one is not.
    const canonical = JSON.stringify(record);
    const seen = bySeq.get(record.seq);
    if (seen && seen.text !== canonical) {
      throw new TamperedError(`${file} does not verify: two different records claim seq ${record.seq}`, {
        code: 'audit_altered',
        hint: 'compare both with the broker (jit audit --after SEQ-1 --limit 1)',
      });
    }
    if (!seen) bySeq.set(record.seq, { record, text: canonical });
  }
  const records = [...bySeq.values()].map((entry) => entry.record).sort((a, b) => a.seq - b.seq);
  const [first] = records;
  if (!first) throw new UsageError(`${file} holds no audit records`, { hint: 'export some first: jit audit --format jsonl > FILE' });
  const pem =
    typeof keyFile === 'string'
      ? await readFile(keyFile, 'utf8').catch((error: NodeJS.ErrnoException) => {
          throw new UsageError(`cannot read ${keyFile}: ${error.code ?? error.message}`, { hint: 'save it from GET /v1/audit/key' });
        })
      : (await (await ctx.session()).client.auditKey()).publicKey;
  let key: ReturnType<typeof createPublicKey>;
  try {
    key = createPublicKey(pem);
  } catch (error) {
    throw new UsageError(`the audit public key is not a PEM public key (${(error as Error).message})`, {
      hint: 'save it from GET /v1/audit/key',
    });
  }
  const checkpointOf = (record: AuditRecord) =>
    record.checkpoint
      ? {
          position: record.seq,
          hash: record.hash,
          at: Date.parse(record.checkpoint.at),
          keyId: record.checkpoint.keyId,
          signature: record.checkpoint.signature,
        }
      : undefined;
  const checkpoints = records.flatMap((record) => checkpointOf(record) ?? []);
  const unsigned = () =>
    new TamperedError(`${file} does not verify: it holds no checkpoint signed by key ${keyIdOf(key)}, so nothing ties it to the broker`, {
      code: 'audit_unsigned',
      hint: 'export a stretch that reaches a checkpoint (they come every checkpointEvery records or checkpointInterval), with the right --public-key',
    });
  if (checkpoints.length === 0) throw unsigned();
  // Mid-chain: start at the first signed checkpoint; the records before it cannot be checked.
  let anchor: AuditRecord | undefined;
  if (first.seq !== 1) {
    anchor = records.find((record) => {
      const checkpoint = checkpointOf(record);
      return checkpoint !== undefined && checkpoint.keyId === keyIdOf(key) && checkpointSigned(checkpoint, key);
    });
    if (!anchor) throw unsigned();
  }
  const verifier = new ChainVerifier(checkpoints, new Map([[keyIdOf(key), key]]), anchor && { position: anchor.seq, hash: anchor.hash });
  for (const record of records) {
    if (anchor && record.seq <= anchor.seq) continue;
    if (!verifier.add(chainFieldsOf(record), record.hash)) break;
  }
  const report = verifier.finish(0, 0);
  if (!report.ok) {
    throw new TamperedError(`${file} does not verify: ${report.problem?.message ?? 'unknown problem'}`, {
      code: `audit_${report.problem?.kind ?? 'tampered'}`.replaceAll('-', '_'),
      hint: 'a copy filtered by action (a sink with `actions`) has gaps by design; otherwise compare it with the broker (jit audit verify)',
    });
  }
  const reached = report.checkpoint ?? (anchor?.checkpoint ? { position: anchor.seq, keyId: anchor.checkpoint.keyId } : undefined);
  if (!reached) throw unsigned();
  const last = records.at(-1)?.seq ?? first.seq;
  const range = anchor
    ? `records ${anchor.seq}-${last}, from signed checkpoint ${anchor.seq}${anchor.seq > first.seq ? ` (records ${first.seq}-${anchor.seq - 1} come before it and are not covered)` : ''}`
    : `records 1-${last}`;
  const newer = last > reached.position ? `; ${last - reached.position} records after it are chained but not signed` : '';
  return {
    data: { ...report, file, from: anchor?.seq ?? 1, to: last, uncovered: anchor ? anchor.seq - first.seq : 0 },
    human: `${ctx.out.color.green('verified')} ${file}: ${range}, up to checkpoint ${reached.position} signed by key ${reached.keyId}${newer}`,
  };
}
