import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { JitError, UsageError } from '../../core/errors.ts';
import { GRANT_ID } from '../../core/grant.ts';
import type { BrokerConfig } from '../config.ts';
import type { GrantRequest, GrantService } from '../grants/service.ts';
import { resolveGrantedPath, splitRequestPath } from '../providers/files.ts';

export const API_VERSION = 'v1';

const grantRequestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['scopes'],
  properties: {
    scopes: { type: 'array', minItems: 1, maxItems: 32, items: { type: 'string', minLength: 1, maxLength: 512 } },
    ttlSeconds: { type: 'integer', minimum: 1 },
    reason: { type: 'string', maxLength: 500 },
  },
} as const;

const idParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: GRANT_ID.source } },
} as const;

function bearer(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  return header?.startsWith('Bearer ') ? header.slice('Bearer '.length).trim() : undefined;
}

/** The control API (/v1) and the files data plane, on one Fastify instance. docs/api.md lists it. */
export function buildApi(options: { config: BrokerConfig; grants: GrantService; version: string }): FastifyInstance {
  const { config, grants } = options;
  const app = Fastify({
    logger: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    bodyLimit: 64 * 1024,
    // Errors Fastify raises before routing (a malformed percent-encoding, say) get jit's body too.
    frameworkErrors: (error, _request, reply: FastifyReply) => {
      reply
        .status(error.statusCode ?? 400)
        .send({ error: { code: 'invalid_request', message: error.message, hint: 'check the request URL' } });
    },
  });

  app.setErrorHandler((error: Error & { validation?: unknown; statusCode?: number }, _request, reply) => {
    if (error instanceof JitError) return reply.status(error.httpStatus).send({ error: error.toJSON() });
    if (error.validation) {
      return reply
        .status(400)
        .send({ error: { code: 'invalid_request', message: error.message, hint: 'see docs/api.md for the request format' } });
    }
    if (error.statusCode && error.statusCode < 500) {
      return reply.status(error.statusCode).send({ error: { code: 'invalid_request', message: error.message } });
    }
    process.stderr.write(`jit broker: unexpected error: ${error.stack ?? error.message}\n`);
    return reply
      .status(500)
      .send({ error: { code: 'internal', message: 'the broker hit an unexpected error', hint: 'see the broker log' } });
  });
  app.setNotFoundHandler((request, reply) =>
    reply
      .status(404)
      .send({ error: { code: 'no_route', message: `no route ${request.method} ${request.url.split('?')[0]}`, hint: 'see docs/api.md' } }),
  );

  const principal = (request: FastifyRequest) => grants.authenticate(bearer(request));

  app.get('/v1/health', async () => ({ status: 'ok', version: options.version }));
  app.get('/v1/whoami', async (request) => ({ subject: await principal(request) }));

  app.post('/v1/grants', { schema: { body: grantRequestSchema } }, async (request, reply) => {
    const subject = await principal(request);
    const issued = await grants.request(subject, request.body as GrantRequest);
    return reply.status(201).send(issued);
  });
  app.get('/v1/grants', async (request) => ({ grants: await grants.list(await principal(request)) }));
  app.get('/v1/grants/:id', { schema: { params: idParams } }, async (request) =>
    grants.get(await principal(request), (request.params as { id: string }).id),
  );
  app.post('/v1/grants/:id/heartbeat', { schema: { params: idParams } }, async (request) =>
    grants.heartbeat(await principal(request), (request.params as { id: string }).id),
  );
  app.delete('/v1/grants/:id', { schema: { params: idParams } }, async (request) =>
    grants.revoke(await principal(request), (request.params as { id: string }).id),
  );

  app.get('/v1/files/*', async (request, reply) => serveFile(request, reply));

  async function serveFile(request: FastifyRequest, reply: FastifyReply) {
    const { grant, scopes } = await grants.usableGrant(bearer(request));
    const rawPath = (request.raw.url ?? '').split('?')[0]?.slice('/v1/files/'.length) ?? '';
    const access: Record<string, unknown> = { path: rawPath };
    try {
      const [resourceName, ...segments] = splitRequestPath(rawPath);
      const resource = resourceName === undefined ? undefined : config.resources[resourceName];
      if (!resourceName || !resource) throw new UsageError(`unknown files resource "${resourceName ?? ''}"`, { code: 'unknown_resource' });
      Object.assign(access, { resource: resourceName, path: segments.join('/') });
      const granted = scopes.filter((scope) => scope.resource === resourceName && scope.action === 'read');
      const target = await resolveGrantedPath(resource.root, segments, granted);
      await grants.recordDataAccess(grant, { ...access, outcome: 'allowed', kind: target.kind });
      if (target.kind === 'directory') return reply.send({ path: [resourceName, ...segments].join('/'), entries: target.entries });
      return reply
        .header('content-type', 'application/octet-stream')
        .header('content-length', target.size)
        .send(grants.openForGrant(grant.id, target.absolute));
    } catch (error) {
      await grants.recordDataAccess(grant, { ...access, outcome: error instanceof JitError ? error.code : 'error' });
      throw error;
    }
  }

  return app;
}
