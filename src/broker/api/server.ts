import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { hasRole, requireRole } from '../../core/caller.ts';
import { JitError, UsageError } from '../../core/errors.ts';
import type { TokenRequest } from '../../core/token.ts';
import type { AuditLog } from '../audit/log.ts';
import type { BrokerConfig } from '../config.ts';
import type { GrantRequest, GrantService } from '../grants/service.ts';
import { type OidcExchange, OidcNotConfiguredError } from '../oidc/exchange.ts';
import type { PrincipalService } from '../principals/service.ts';
import { resolveGrantedPath, splitRequestPath } from '../providers/files.ts';
import { registerHttpProxy } from '../providers/http/proxy.ts';
import { S3Error } from '../providers/s3/contracts.ts';
import { isS3Path, registerS3Gateway, sendS3Error } from '../providers/s3/gateway.ts';
import { registerAuditRoutes } from './audit-routes.ts';
import { AuthFailureLimiter, RateLimitedError } from './auth-limiter.ts';
import { openApiDocument } from './openapi.ts';
import {
  approveRequestSchema,
  denyRequestSchema,
  grantIdParams,
  grantListQuery,
  grantRequestSchema,
  oidcExchangeSchema,
  renewRequestSchema,
  tokenIdParams,
  tokenRequestSchema,
} from './schemas.ts';

export const API_VERSION = 'v1';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * The one error body of the API: RFC 9457 problem details (application/problem+json). `type` is
 * `urn:jit:error:<code>`, `code` the same stable code for scripts (docs/exit-codes.md), `detail`
 * the one-line message, `hint` what to do, `requestId` the x-request-id to find it in the log.
 */
function sendError(request: FastifyRequest, reply: FastifyReply, status: number, error: { code: string; message: string; hint?: string }) {
  return reply
    .status(status)
    .header('content-type', 'application/problem+json; charset=utf-8')
    .send({
      type: `urn:jit:error:${error.code}`,
      title: STATUS_CODES[status] ?? 'Error',
      status,
      detail: error.message,
      instance: (request.raw.url ?? request.url).split('?')[0],
      code: error.code,
      ...(error.hint ? { hint: error.hint } : {}),
      requestId: request.id,
    });
}

/** Fastify's own client errors, with jit's codes and hints. */
const FRAMEWORK_ERRORS: Record<string, { code: string; hint: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { code: 'body_too_large', hint: 'request bodies are at most 64 KiB' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { code: 'unsupported_media_type', hint: 'send JSON with content-type: application/json' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: 'invalid_request', hint: 'send a JSON body, or no content-type header' },
  FST_ERR_CTP_INVALID_JSON_BODY: { code: 'invalid_request', hint: 'the body is not valid JSON' },
};

function bearer(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  return header?.startsWith('Bearer ') ? header.slice('Bearer '.length).trim() : undefined;
}

/** The control API (/v1) and the files data plane, on one Fastify instance. docs/api.md lists it. */
export function buildApi(options: {
  config: BrokerConfig;
  grants: GrantService;
  principals: PrincipalService;
  /** Exchanges CI identity tokens for sessions (oidc.issuers); without it, POST /v1/auth/oidc refuses every token. */
  oidc?: OidcExchange;
  version: string;
  /** Failed-authentication budget per source address (default 20 a minute). */
  authFailures?: { limit?: number; windowMs?: number };
  /** The audit trail, for its routes (/v1/audit...). */
  audit: AuditLog;
  /** Told of every route as it is registered (the OpenAPI test compares them with the document). */
  onRoute?: (route: { method: string; url: string }) => void;
}): FastifyInstance {
  const { config, grants, principals } = options;
  const app = Fastify({
    logger: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    bodyLimit: 64 * 1024,
    // Behind load balancers (several replicas), request.ip is the client's only if they are trusted.
    ...(config.trustedProxies.length > 0 ? { trustProxy: config.trustedProxies } : {}),
    // Longer than clients and load balancers keep idle connections, so the broker is never the
    // side that closes a connection a client is about to reuse.
    keepAliveTimeout: 65_000,
    // Every request has an id: the caller's x-request-id when it is a sane token, else a new one.
    // It comes back as x-request-id and in error bodies, to find the request in the broker log.
    genReqId: (request) => {
      const given = request.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    // Errors Fastify raises before routing (a malformed percent-encoding, say) get jit's body too.
    frameworkErrors: (error, request, reply: FastifyReply) => {
      // The S3 gateway's clients expect S3's XML errors, even for a URL Fastify cannot route.
      if (isS3Path(request.raw.url ?? '')) {
        sendS3Error(request, reply, new S3Error('InvalidURI', 400, "Couldn't parse the specified URI."));
        return;
      }
      sendError(request, reply, error.statusCode ?? 400, {
        code: 'invalid_request',
        message: error.message,
        hint: 'check the request URL',
      });
    },
  });
  const { onRoute } = options;
  if (onRoute) {
    app.addHook('onRoute', (route) => {
      for (const method of [route.method].flat()) if (method !== 'HEAD') onRoute({ method, url: route.url });
    });
  }
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
  });

  app.setErrorHandler((error: Error & { validation?: unknown; statusCode?: number; code?: string }, request, reply) => {
    if (error instanceof RateLimitedError) reply.header('retry-after', String(error.retryAfterSeconds));
    if (error instanceof JitError) return sendError(request, reply, error.httpStatus, error.toJSON());
    if (error.validation) {
      return sendError(request, reply, 400, {
        code: 'invalid_request',
        message: error.message,
        hint: 'see docs/api.md for the request format',
      });
    }
    if (error.statusCode && error.statusCode < 500) {
      const known = FRAMEWORK_ERRORS[error.code ?? ''];
      return sendError(request, reply, error.statusCode, {
        code: known?.code ?? 'invalid_request',
        message: error.message,
        ...(known ? { hint: known.hint } : {}),
      });
    }
    process.stderr.write(`jit broker: unexpected error in request ${request.id}: ${error.stack ?? error.message}\n`);
    return sendError(request, reply, 500, { code: 'internal', message: 'the broker hit an unexpected error', hint: 'see the broker log' });
  });
  app.setNotFoundHandler((request, reply) =>
    sendError(request, reply, 404, {
      code: 'no_route',
      message: `no route ${request.method} ${request.url.split('?')[0]}`,
      hint: 'see docs/api.md',
    }),
  );

  const limiter = new AuthFailureLimiter(options.authFailures);
  /** Runs one authentication, refusing sources over their failure budget and counting failures. */
  const guarded = async <T>(request: FastifyRequest, authenticate: () => Promise<T>): Promise<T> => {
    limiter.check(request.ip);
    try {
      return await authenticate();
    } catch (error) {
      // Only an unknown token or credential counts as a guess. A known grant's credential refused
      // because the grant ended (or awaits approval) is its holder retrying, not someone guessing:
      // counting it would lock a busy address (a CI runner, a load balancer) out of the broker.
      if (error instanceof JitError && error.httpStatus === 401 && (error.code === 'unauthenticated' || error.code === 'oidc_rejected'))
        limiter.recordFailure(request.ip);
      throw error;
    }
  };
  const caller = (request: FastifyRequest) => guarded(request, () => principals.authenticate(bearer(request)));

  app.get('/v1/health', async () => ({ status: 'ok', version: options.version }));
  const document = openApiDocument(options.version);
  app.get('/v1/openapi.json', async () => document);
  app.get('/v1/whoami', async (request) => {
    const { subject, roles, tokenId, sessionExpiresAt } = await caller(request);
    return { subject, roles, tokenId, ...(sessionExpiresAt === undefined ? {} : { expiresAt: new Date(sessionExpiresAt).toISOString() }) };
  });

  // A CI job's OIDC identity token for a requester session (docs/ci.md#oidc). No API token: the
  // identity token is the credential, and each refusal counts against the source's failure budget.
  app.post('/v1/auth/oidc', { schema: { body: oidcExchangeSchema } }, async (request, reply) => {
    const { token } = request.body as { token: string };
    const { oidc } = options;
    if (!oidc) throw new OidcNotConfiguredError();
    return reply.status(201).send(await guarded(request, () => oidc.exchange(token)));
  });

  // Roles (docs/principals.md): a requester works on its own grants (someone else's is a 404, as
  // if it did not exist); an auditor reads anyone's; an admin also revokes anyone's.
  app.post('/v1/grants', { schema: { body: grantRequestSchema } }, async (request, reply) => {
    const who = await caller(request);
    requireRole(who, 'requester', 'requesting a grant');
    const issued = await grants.request(who, request.body as GrantRequest, { source: request.ip });
    // 202: accepted but pending approval; the credential works once it is approved.
    return reply.status(issued.state === 'pending' ? 202 : 201).send(issued);
  });
  app.get('/v1/grants', { schema: { querystring: grantListQuery } }, async (request) => {
    const who = await caller(request);
    if ((request.query as { all?: string }).all === 'true') {
      requireRole(who, 'auditor', "listing every principal's grants");
      return { grants: await grants.listAll() };
    }
    requireRole(who, 'requester', 'listing your grants');
    return { grants: await grants.list(who.subject) };
  });
  app.get('/v1/grants/:id', { schema: { params: grantIdParams } }, async (request) => {
    const who = await caller(request);
    const { id } = request.params as { id: string };
    if (hasRole(who, 'auditor')) return grants.getAny(id);
    requireRole(who, 'requester', 'reading a grant');
    return grants.get(who.subject, id);
  });
  app.post('/v1/grants/:id/heartbeat', { schema: { params: grantIdParams } }, async (request) => {
    const who = await caller(request);
    requireRole(who, 'requester', 'a heartbeat');
    return grants.heartbeat(who.subject, (request.params as { id: string }).id);
  });
  app.delete('/v1/grants/:id', { schema: { params: grantIdParams } }, async (request) => {
    const who = await caller(request);
    const { id } = request.params as { id: string };
    if (hasRole(who, 'admin')) return grants.revoke(who.subject, id, { anyOwner: true });
    requireRole(who, 'requester', 'revoking a grant');
    return grants.revoke(who.subject, id);
  });

  app.post('/v1/grants/:id/renew', { schema: { params: grantIdParams, body: renewRequestSchema } }, async (request) => {
    const who = await caller(request);
    requireRole(who, 'requester', 'renewing a grant');
    const { ttlSeconds } = (request.body ?? {}) as { ttlSeconds?: number };
    return grants.renew(who, (request.params as { id: string }).id, ttlSeconds);
  });

  // Approval: an approver sees and reviews the pending requests whose rules name it (by user or
  // group), never its own.
  app.get('/v1/approvals', async (request) => {
    const who = await caller(request);
    requireRole(who, 'approver', 'listing requests to review');
    return { grants: await grants.reviewable(who.subject) };
  });
  app.post('/v1/grants/:id/approve', { schema: { params: grantIdParams, body: approveRequestSchema } }, async (request) => {
    const who = await caller(request);
    requireRole(who, 'approver', 'approving a request');
    const { reason } = (request.body ?? {}) as { reason?: string };
    return grants.approve(who.subject, (request.params as { id: string }).id, reason);
  });
  app.post('/v1/grants/:id/deny', { schema: { params: grantIdParams, body: denyRequestSchema } }, async (request) => {
    const who = await caller(request);
    requireRole(who, 'approver', 'denying a request');
    const { reason } = request.body as { reason: string };
    return grants.deny(who.subject, (request.params as { id: string }).id, reason);
  });

  // API tokens: admins only. A new token is in the 201 body once; lists never show a token or hash.
  app.post('/v1/tokens', { schema: { body: tokenRequestSchema } }, async (request, reply) => {
    const who = await caller(request);
    requireRole(who, 'admin', 'creating a token');
    return reply.status(201).send(await principals.create(who.subject, request.body as TokenRequest));
  });
  app.get('/v1/tokens', async (request) => {
    requireRole(await caller(request), 'admin', 'listing tokens');
    return { tokens: await principals.list() };
  });
  app.delete('/v1/tokens/:id', { schema: { params: tokenIdParams } }, async (request) => {
    const who = await caller(request);
    requireRole(who, 'admin', 'revoking a token');
    return principals.revoke(who.subject, (request.params as { id: string }).id);
  });

  app.get('/v1/files/*', async (request, reply) => serveFile(request, reply));
  registerAuditRoutes(app, { audit: options.audit, caller });
  registerS3Gateway(app, { config, grants, limiter });
  registerHttpProxy(app, { config, grants, limiter });

  async function serveFile(request: FastifyRequest, reply: FastifyReply) {
    const { grant, scopes } = await guarded(request, () => grants.usableGrant(bearer(request)));
    const rawPath = (request.raw.url ?? '').split('?')[0]?.slice('/v1/files/'.length) ?? '';
    const access: Record<string, unknown> = { path: rawPath };
    try {
      const [resourceName, ...segments] = splitRequestPath(rawPath);
      const resource = resourceName === undefined ? undefined : config.resources[resourceName];
      if (!resourceName || resource?.kind !== 'files')
        throw new UsageError(`unknown files resource "${resourceName ?? ''}"`, { code: 'unknown_resource' });
      Object.assign(access, { resource: resourceName, path: segments.join('/') });
      const granted = scopes.filter((scope) => scope.resource === resourceName && scope.action === 'read');
      const target = await resolveGrantedPath(resource.root, segments, granted);
      await grants.recordDataAccess(grant, { ...access, outcome: 'allowed', kind: target.kind }, 'data.read', request.ip);
      if (target.kind === 'directory') return reply.send({ path: [resourceName, ...segments].join('/'), entries: target.entries });
      return reply
        .header('content-type', 'application/octet-stream')
        .header('content-length', target.size)
        .send(grants.openForGrant(grant.id, target.absolute, target.size));
    } catch (error) {
      await grants.recordDataAccess(
        grant,
        { ...access, outcome: error instanceof JitError ? error.code : 'error' },
        'data.read',
        request.ip,
      );
      throw error;
    }
  }

  return app;
}
