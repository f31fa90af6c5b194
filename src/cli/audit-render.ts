import type { ChalkInstance } from 'chalk';
import type { AuditRecord } from '../core/audit.ts';
import { parseDuration } from '../core/duration.ts';
import { UsageError } from '../core/errors.ts';
import type { CommandInput } from './command.ts';
import { printable } from './printable.ts';

/** The record filters `jit audit` and `jit watch` share, as GET /v1/audit takes them. */
export type AuditFilters = Record<string, string | undefined>;

/**
 * A time for --since/--until: an ISO 8601 date-time, or a duration meaning that long ago
 * (`1h`, `30m`, `2d`).
 */
export function parseTime(text: string, flag: string, now = Date.now()): string {
  if (/^\d{4}-\d{2}-\d{2}/.test(text)) {
    const ms = Date.parse(text);
    if (!Number.isNaN(ms)) return new Date(ms).toISOString();
  } else {
    try {
      return new Date(now - parseDuration(text, flag) * 1000).toISOString();
    } catch {
      // Falls through to the one error below, which names both forms.
    }
  }
  throw new UsageError(`${flag} "${text}" is neither a date-time nor a duration`, {
    hint: `e.g. ${flag} 2026-11-25T09:00:00Z, or ${flag} 1h for an hour ago`,
  });
}

/** The filters common to `jit audit` and `jit watch`, from their options. */
export function filtersFrom(options: CommandInput['options']): AuditFilters {
  const text = (key: string) => (typeof options[key] === 'string' ? (options[key] as string) : undefined);
  return { grant: text('grant'), subject: text('subject'), actor: text('actor'), action: text('action'), scope: text('scope') };
}

const OUTCOME_COLOUR: Record<string, keyof Pick<ChalkInstance, 'green' | 'cyan' | 'red' | 'yellow' | 'magenta'>> = {
  ok: 'green',
  pending: 'cyan',
  denied: 'red',
  error: 'yellow',
  alert: 'magenta',
};

/** An outcome in its colour (green ok, cyan pending, red denied, yellow error, magenta alert). */
export function colourOutcome(outcome: string, color: ChalkInstance): string {
  const name = OUTCOME_COLOUR[outcome];
  return name ? color[name](outcome) : outcome;
}

/** The detail keys worth a glance, in the order shown; the full details are in --json. */
const GLANCE = [
  'operation',
  'method',
  'path',
  'key',
  'status',
  'bytes',
  'outcome',
  'reason',
  'code',
  'by',
  'ttlSeconds',
  'denials',
  'usedFrom',
  // data.session: where a database session came from and what it calls itself.
  'address',
  'applicationName',
  'roles',
  'tokenId',
  'version',
];

/** A record's details in one short line: `path=train/a.jsonl status=200 bytes=812`. */
export function summarize(record: AuditRecord): string {
  return GLANCE.flatMap((key) => {
    const value = record.details[key];
    if (
      value === undefined ||
      value === null ||
      value === '' ||
      (key === 'by' && value === record.actor) ||
      (key === 'outcome' && value === 'allowed')
    )
      return [];
    const text = printable(typeof value === 'string' ? value : JSON.stringify(value));
    return [`${key}=${text.length > 60 ? `${text.slice(0, 57)}...` : text}`];
  }).join(' ');
}

/** One record as a line of `jit watch`: time, outcome, action, actor, grant, scope, details. */
export function recordLine(record: AuditRecord, color: ChalkInstance): string {
  const time = record.at.slice(11, 23);
  const parts = [
    color.dim(time),
    colourOutcome(printable(record.outcome), color) + ' '.repeat(Math.max(0, 7 - record.outcome.length)),
    printable(record.action).padEnd(24),
    printable(record.actor ?? '-'),
    printable(record.grant ?? '-'),
    printable(record.scope ?? ''),
    summarize(record),
  ];
  return parts.filter((part) => part !== '').join('  ');
}
