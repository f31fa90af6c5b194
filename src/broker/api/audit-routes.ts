import type { FastifyInstance, FastifyRequest } from 'fastify';
import { type Caller, hasRole, requireRole } from '../../core/caller.ts';
import { ForbiddenError, UsageError } from '../../core/errors.ts';
import type { AuditLog } from '../audit/log.ts';
import type { AuditQuery } from '../store/store.ts';

/** The filters `GET /v1/audit` and `GET /v1/audit/stream` share (docs/api.md#audit). */
const filterProperties = {
  grant: { type: 'string', maxLength: 64, description: 'records of this grant' },
  subject: { type: 'string', maxLength: 256, description: "records about this subject's grants and tokens" },
  actor: { type: 'string', maxLength: 256, description: 'records of what this actor did (a user, a CI identity, or system)' },
  action: { type: 'string', maxLength: 64, description: 'an action (grant.revoked), or a family ending in .* (data.*)' },
  outcome: { type: 'string', enum: ['ok', 'pending', 'denied', 'error', 'alert'], description: 'records with this outcome' },
  scope: { type: 'string', maxLength: 512, description: 'records whose scope starts with this (datasets/train)' },
  since: { type: 'string', format: 'date-time', description: 'records at or after this time' },
  until: { type: 'string', format: 'date-time', description: 'records before this time' },
  after: { type: 'string', pattern: '^[0-9]{1,15}$', description: 'records after this seq (the cursor of the previous page)' },
} as const;

export const auditQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ...filterProperties,
    limit: { type: 'string', pattern: '^([1-9][0-9]{0,2}|1000)$', description: 'records per page, 1-1000 (default 100)' },
  },
} as const;

export const auditStreamQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: filterProperties,
} as const;

export const auditRecordSchema = {
  type: 'object',
  required: ['seq', 'at', 'action', 'actor', 'subject', 'grant', 'scope', 'outcome', 'details', 'hash'],
  properties: {
    seq: { type: 'integer', description: 'position in the hash chain: 1, 2, 3, ... with no gaps, the same on every replica' },
    at: { type: 'string', format: 'date-time' },
    action: { type: 'string', description: 'grant.issued, data.read, alert.denied_burst, ... (docs/audit.md#actions)' },
    actor: { type: ['string', 'null'], description: 'who did it: a user, a CI identity, or system' },
    subject: { type: ['string', 'null'], description: 'whose grant or token it is about' },
    grant: { type: ['string', 'null'] },
    scope: { type: ['string', 'null'], description: 'the scopes involved, space-separated' },
    outcome: { type: 'string', enum: ['ok', 'pending', 'denied', 'error', 'alert'], description: 'records with this outcome' },
    details: { type: 'object', description: 'the action-specific rest; never a secret' },
    hash: { type: 'string', description: 'SHA-256 chain hash (docs/audit.md#proof)' },
    checkpoint: {
      type: 'object',
      description: 'on a record a checkpoint was signed at: the Ed25519 signature over its seq and hash (outside the hash)',
      properties: { at: { type: 'string', format: 'date-time' }, keyId: { type: 'string' }, signature: { type: 'string' } },
    },
  },
} as const;

export const auditPageSchema = {
  type: 'object',
  required: ['records', 'next'],
  properties: {
    records: { type: 'array', items: auditRecordSchema },
    next: { type: ['integer', 'null'], description: 'pass as `after` for the next page; null on the last page' },
  },
} as const;

type Filters = {
  grant?: string;
  subject?: string;
  actor?: string;
  action?: string;
  outcome?: string;
  scope?: string;
  since?: string;
  until?: string;
  after?: string;
};

/** An auditor reads everything; a requester reads only records about its own grants and tokens. */
function scoped(who: Caller, filters: Filters, limit: number): AuditQuery {
  if (!hasRole(who, 'auditor')) {
    requireRole(who, 'requester', 'reading the audit trail');
    if (filters.subject !== undefined && filters.subject !== who.subject) {
      throw new ForbiddenError(`${who.subject} may read only its own audit records, not ${filters.subject}'s`, {
        hint: 'an auditor token reads every record (`jit broker token create --role auditor`)',
      });
    }
  }
  const time = (text: string | undefined, name: string) => {
    if (text === undefined) return undefined;
    const ms = Date.parse(text);
    if (Number.isNaN(ms)) throw new UsageError(`${name} is not a date-time: ${text}`, { hint: 'use ISO 8601, e.g. 2026-11-25T10:00:00Z' });
    return ms;
  };
  return {
    limit,
    afterPosition: filters.after === undefined ? undefined : Number(filters.after),
    grantId: filters.grant,
    subject: hasRole(who, 'auditor') ? filters.subject : who.subject,
    actor: filters.actor,
    action: filters.action,
    outcome: filters.outcome,
    scope: filters.scope,
    since: time(filters.since, 'since'),
    until: time(filters.until, 'until'),
  };
}

/** How often a live stream looks for records other replicas sealed, and how often it says it is alive. */
const STREAM_POLL_MS = 250;
const STREAM_KEEPALIVE_MS = 15_000;

export function registerAuditRoutes(
  app: FastifyInstance,
  options: { audit: AuditLog; caller: (request: FastifyRequest) => Promise<Caller> },
): void {
  const { audit, caller } = options;
  // Live streams never end on their own: a closing broker ends them, or app.close() would wait forever.
  const streams = new Set<() => void>();
  app.addHook('preClose', async () => {
    for (const close of streams) close();
  });

  app.get('/v1/audit', { schema: { querystring: auditQuerySchema } }, async (request) => {
    const { limit: given, ...filters } = request.query as Filters & { limit?: string };
    const limit = Number(given ?? 100);
    const records = await audit.query(scoped(await caller(request), filters, limit));
    return { records, next: records.length === limit ? (records.at(-1)?.seq ?? null) : null };
  });

  app.get('/v1/audit/verify', async (request) => {
    requireRole(await caller(request), 'auditor', 'verifying the audit trail');
    return audit.verify();
  });

  app.get('/v1/audit/key', async (request) => {
    await caller(request);
    return { keyId: audit.key.keyId, algorithm: 'Ed25519', publicKey: audit.key.publicPem };
  });

  /**
   * Server-sent events: every sealed record matching the filters, from `after` (or the
   * Last-Event-ID a reconnecting client sends) onwards, each with its seq as the event id, so a
   * reconnect resumes exactly where the stream broke off. No cursor: from the current head on.
   */
  app.get('/v1/audit/stream', { schema: { querystring: auditStreamQuerySchema } }, async (request, reply) => {
    const who = await caller(request);
    const filters = request.query as Filters;
    const lastEventId = Number(request.headers['last-event-id']);
    const query = scoped(who, filters, 500);
    const resume = Number.isSafeInteger(lastEventId) && lastEventId >= 0 ? lastEventId : query.afterPosition;
    await audit.seal();
    let cursor: number = resume ?? (await audit.headPosition());
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-request-id': request.id,
    });
    // The cursor goes out first as an event id, so a client that loses the connection before any
    // record matched its filters still resumes from here, not from a later head.
    raw.write(`retry: 1000\nid: ${cursor}\nevent: cursor\ndata: {"seq":${cursor}}\n\n`);
    let open = true;
    let wake: (() => void) | undefined;
    let drained: (() => void) | undefined;
    const stopListening = audit.onSealed(() => wake?.());
    const keepalive = setInterval(() => raw.write(': keepalive\n\n'), STREAM_KEEPALIVE_MS);
    const close = () => {
      open = false;
      wake?.();
      drained?.();
    };
    raw.on('close', close);
    raw.on('error', close);
    streams.add(close);
    // A slow reader is waited for (the socket's buffer drains) rather than buffered in memory.
    const send = async (text: string) => {
      if (raw.write(text) || !open) return;
      await new Promise<void>((resolve) => {
        drained = resolve;
        raw.once('drain', resolve);
      });
      drained = undefined;
    };
    try {
      while (open) {
        // The head first: records sealed after this read are picked up by the next round.
        const head = await audit.headPosition();
        const records = await audit.tail({ ...query, afterPosition: cursor });
        for (const record of records) {
          if (!open) break;
          await send(`id: ${record.seq}\nevent: audit\ndata: ${JSON.stringify(record)}\n\n`);
        }
        const before = cursor;
        cursor = records.length === query.limit ? (records.at(-1)?.seq ?? cursor) : Math.max(cursor, head, records.at(-1)?.seq ?? 0);
        // Records passed over by the filters move the resume point too.
        if (cursor > (records.at(-1)?.seq ?? before) && open) await send(`id: ${cursor}\nevent: cursor\ndata: {"seq":${cursor}}\n\n`);
        if (records.length === query.limit) continue;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, STREAM_POLL_MS);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
    } catch (error) {
      raw.write(`event: error\ndata: ${JSON.stringify({ message: (error as Error).message })}\n\n`);
    } finally {
      clearInterval(keepalive);
      stopListening();
      streams.delete(close);
      raw.end();
    }
  });
}
