import { readFile } from 'node:fs/promises';
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import { Transform, type TransformCallback } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { globMatches, type Scope } from '../../../core/scope.ts';
import type { BrokerConfig, HttpResource } from '../../config.ts';
import type { GrantService } from '../../grants/service.ts';

/** Where the proxy is mounted: a job's `<PREFIX>_BASE_URL` is `<publicUrl>/proxy/<resource>`. */
export const PROXY_PREFIX = '/proxy';

/** Headers that describe one hop, never forwarded either way (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
]);

/** Where the job may put its ephemeral key: what OpenAI-style and Anthropic-style SDKs send. */
const KEY_HEADERS = ['authorization', 'x-api-key', 'api-key'];

/** The `<PREFIX>_BASE_URL` / `<PREFIX>_API_KEY` pair a grant's API scopes give the job. */
export function httpEnv(publicUrl: string, credential: string, resources: readonly [string, HttpResource][]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, resource] of resources) {
    env[`${resource.envPrefix}_BASE_URL`] = `${publicUrl}${PROXY_PREFIX}/${name}`;
    env[`${resource.envPrefix}_API_KEY`] = credential;
  }
  return env;
}

type Problem = { status: number; code: string; message: string; hint?: string };

/**
 * The API proxy (docs/http.md): a job calls `<PREFIX>_BASE_URL` with its ephemeral key; the broker
 * checks the grant and the scope's method and path, swaps the key for the upstream secret, and
 * streams both ways. The upstream secret never travels back: it is removed from response headers
 * and bodies, and never appears in errors. Every call is an access record.
 */
export function registerHttpProxy(
  app: FastifyInstance,
  options: { config: BrokerConfig; grants: GrantService; limiter: { check(source: string): void; recordFailure(source: string): void } },
): void {
  const { config, grants } = options;
  const secrets = new Map<string, Promise<string>>();
  const secretOf = (name: string, resource: HttpResource): Promise<string> => {
    let secret = secrets.get(name);
    if (!secret) {
      secret =
        resource.secretEnv !== undefined
          ? Promise.resolve(process.env[resource.secretEnv] ?? '')
          : readFile(resource.secretFile ?? '', 'utf8').then((text) => text.trim());
      secrets.set(name, secret);
    }
    return secret;
  };

  app.register(
    async (proxy) => {
      proxy.removeAllContentTypeParsers();
      proxy.addContentTypeParser('*', (_request: FastifyRequest, _payload: IncomingMessage, done: (error: Error | null) => void) =>
        done(null),
      );
      proxy.route({
        method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
        url: '/:resource/*',
        handler: (request, reply) => forward(request, reply),
      });
    },
    { prefix: PROXY_PREFIX },
  );

  async function forward(request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const started = performance.now();
    const { resource: name } = request.params as { resource: string };
    const resource = config.resources[name];
    if (resource?.kind !== 'http')
      return refuse(reply, { status: 404, code: 'unknown_resource', message: `no API "${name}" on this broker` });
    const rawUrl = request.raw.url ?? '';
    const rest = rawUrl.slice(`${PROXY_PREFIX}/${name}`.length) || '/';
    const path = rest.split('?')[0] ?? '/';

    options.limiter.check(request.ip);
    const check = await grants.checkCredential(ephemeralKey(request.headers) ?? '');
    if (!check.usable) {
      if (!check.grant) {
        options.limiter.recordFailure(request.ip);
        return refuse(reply, {
          status: 401,
          code: 'unauthenticated',
          message: 'the API key is not valid',
          hint: 'run the job under `jit run`',
        });
      }
      await grants.recordDataAccess(
        check.grant,
        { resource: name, method: request.method, path, reason: check.reason },
        'data.refused',
        request.ip,
      );
      if (check.grant.state === 'suspended') {
        return refuse(reply, {
          status: 403,
          code: 'budget_exceeded',
          message: `grant ${check.grant.id} is suspended: ${check.grant.endReason ?? 'over budget'}`,
          hint: 'request a new grant, or ask a data owner for a larger budget',
        });
      }
      return refuse(reply, {
        status: 401,
        code: check.reason,
        message: `grant ${check.grant.id} is ${check.reason === 'grant_pending' ? 'waiting for approval' : 'no longer active'}`,
      });
    }
    const { grant, scopes } = check;
    const access = { resource: name, method: request.method, path };
    if (!allows(scopes, name, request.method, path)) {
      await grants.recordDataAccess(grant, { ...access, outcome: 'outside_scope', status: 403 }, 'data.refused', request.ip);
      const granted = scopes.filter((scope) => scope.resource === name).map((scope) => scope.action);
      return refuse(reply, {
        status: 403,
        code: 'outside_scope',
        message: `grant ${grant.id} does not allow ${request.method} ${path} on ${name}`,
        hint: granted.length > 0 ? `it allows: ${granted.join(', ')}` : `request a scope such as ${name}:${request.method} ${path}`,
      });
    }
    const length = Number(request.headers['content-length'] ?? 0);
    if (length > resource.maxRequestBytes) {
      request.raw.resume();
      return refuse(reply, {
        status: 413,
        code: 'body_too_large',
        message: `request bodies to ${name} are at most ${resource.maxRequestBytes} bytes`,
      });
    }

    const budget = await grants.consume(grant, 1, 0);
    if (!budget.allowed) {
      request.raw.resume();
      return refuse(reply, {
        status: 403,
        code: 'budget_exceeded',
        message: `grant ${grant.id} is suspended: ${budget.reason}`,
        hint: 'request a new grant, or ask a data owner for a larger budget',
      });
    }
    const secret = await secretOf(name, resource);
    const upstream = new URL(`${resource.upstream}${rest}`);
    const headers = forwardedHeaders(request.headers, resource, secret);
    const client = upstream.protocol === 'https:' ? https : http;
    return new Promise<void>((resolve) => {
      let received = 0;
      let sent = 0;
      let status = 502;
      const finish = (outcome: string) => {
        const detail = {
          ...access,
          outcome,
          status,
          bytesIn: received,
          bytesOut: sent,
          latencyMs: Math.round(performance.now() - started),
        };
        grants
          .recordDataAccess(grant, detail, 'data.call', request.ip)
          .catch((error: Error) =>
            process.stderr.write(`jit broker: recording an API call of grant ${grant.id} failed: ${error.message}\n`),
          );
        // Response bytes count against the byte budget once the response is done.
        if (sent > 0) grants.consume(grant, 0, sent).catch(() => undefined);
      };
      const outgoing = client.request(
        upstream,
        { method: request.method, headers, timeout: resource.timeoutSeconds * 1000 },
        (response) => {
          status = response.statusCode ?? 502;
          const redact = new SecretRedactor(secret);
          const body = grants.trackStream(grant.id, response.pipe(redact), Number.POSITIVE_INFINITY);
          body.on('data', (chunk: Buffer) => {
            sent += chunk.length;
          });
          reply.raw.once('close', () => {
            finish(reply.raw.writableFinished ? 'allowed' : 'cut');
            resolve();
          });
          reply.status(status);
          for (const [header, value] of Object.entries(responseHeaders(response.headers, secret))) reply.header(header, value);
          reply.send(body);
        },
      );
      outgoing.on('timeout', () => outgoing.destroy(new Error('upstream timed out')));
      outgoing.on('error', (error: NodeJS.ErrnoException) => {
        if (reply.sent) return;
        status = 502;
        finish('upstream_error');
        // The message names the API, never the secret or the upstream's reply.
        void refuse(reply, {
          status: 502,
          code: 'upstream_unreachable',
          message: `the ${name} API could not be reached (${error.code ?? (error.message === 'upstream timed out' ? 'timeout' : 'error')})`,
          hint: 'try again; the broker does not retry calls itself',
        });
        resolve();
      });
      request.raw.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > resource.maxRequestBytes) outgoing.destroy(new Error('request body too large'));
      });
      request.raw.pipe(outgoing);
    });
  }
}

/** The job's ephemeral key: a bearer token, or an `x-api-key` / `api-key` header. */
function ephemeralKey(headers: IncomingHttpHeaders): string | undefined {
  const authorization = headers.authorization;
  if (typeof authorization === 'string' && /^bearer /i.test(authorization)) return authorization.slice(7).trim();
  for (const name of ['x-api-key', 'api-key']) {
    const value = headers[name];
    if (typeof value === 'string' && value !== '') return value.trim();
  }
  return undefined;
}

/** Whether a scope on this API allows the method and path (`*` within a segment, `**` across). */
function allows(scopes: readonly Scope[], name: string, method: string, path: string): boolean {
  return scopes.some((scope) => {
    if (scope.resource !== name) return false;
    const space = scope.action.indexOf(' ');
    const allowedMethod = scope.action.slice(0, space);
    const pattern = scope.action.slice(space + 1);
    const methodOk = allowedMethod === '*' || allowedMethod === method || (allowedMethod === 'GET' && method === 'HEAD');
    return methodOk && globMatches(pattern, path);
  });
}

/** The request's headers for the upstream: hop-by-hop and the job's key gone, the upstream secret in. */
function forwardedHeaders(incoming: IncomingHttpHeaders, resource: HttpResource, secret: string): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined || HOP_BY_HOP.has(name) || KEY_HEADERS.includes(name)) continue;
    headers[name] = value;
  }
  if (resource.auth.type === 'bearer') headers.authorization = `Bearer ${secret}`;
  else headers[resource.auth.name] = secret;
  return headers;
}

/** The upstream's response headers for the job: hop-by-hop gone, the secret blanked wherever it appears. */
function responseHeaders(incoming: IncomingHttpHeaders, secret: string): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {};
  const clean = (value: string) => (secret && value.includes(secret) ? value.split(secret).join('*'.repeat(secret.length)) : value);
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined || HOP_BY_HOP.has(name)) continue;
    headers[name] = Array.isArray(value) ? value.map(clean) : clean(value);
  }
  return headers;
}

/**
 * Blanks every occurrence of the upstream secret in a streamed body (an upstream that echoes the
 * request's headers would otherwise hand it to the job), with the same length so a
 * Content-Length stays right. Between chunks it holds back only a tail that could be the start of
 * the secret, so a secret split across chunks is caught and a streamed event is not delayed.
 */
export class SecretRedactor extends Transform {
  readonly #secret: Buffer;
  #held: Buffer = Buffer.alloc(0);

  constructor(secret: string) {
    super();
    this.#secret = Buffer.from(secret);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.#secret.length === 0) {
      callback(null, chunk);
      return;
    }
    const data = this.#held.length > 0 ? Buffer.concat([this.#held, chunk]) : Buffer.from(chunk);
    this.#blank(data);
    const keep = this.#partialAtEnd(data);
    this.#held = Buffer.from(data.subarray(data.length - keep));
    callback(null, data.subarray(0, data.length - keep));
  }

  /** How many bytes at the end of `data` could be the start of the secret (0 almost always). */
  #partialAtEnd(data: Buffer): number {
    // Only where the secret's first byte occurs in the last secret.length - 1 bytes (rarely at all).
    const first = this.#secret[0] ?? 0;
    for (let at = data.indexOf(first, Math.max(0, data.length - this.#secret.length + 1)); at !== -1; at = data.indexOf(first, at + 1)) {
      if (data.subarray(at).equals(this.#secret.subarray(0, data.length - at))) return data.length - at;
    }
    return 0;
  }

  override _flush(callback: TransformCallback): void {
    callback(null, this.#held.length > 0 ? this.#held : undefined);
  }

  #blank(data: Buffer): void {
    for (let at = data.indexOf(this.#secret); at !== -1; at = data.indexOf(this.#secret, at + 1)) {
      data.fill(0x2a, at, at + this.#secret.length);
    }
  }
}

function refuse(reply: FastifyReply, problem: Problem): FastifyReply {
  return reply
    .status(problem.status)
    .header('content-type', 'application/problem+json; charset=utf-8')
    .send({
      type: `urn:jit:error:${problem.code}`,
      title: http.STATUS_CODES[problem.status] ?? 'Error',
      status: problem.status,
      detail: problem.message,
      code: problem.code,
      ...(problem.hint ? { hint: problem.hint } : {}),
      requestId: reply.request.id,
    });
}
