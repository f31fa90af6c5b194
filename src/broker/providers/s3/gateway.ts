import type { IncomingMessage } from 'node:http';
import { PassThrough, type Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { type Scope, scopeCovers } from '../../../core/scope.ts';
import { RateLimitedError } from '../../api/auth-limiter.ts';
import type { BrokerConfig } from '../../config.ts';
import type { CredentialCheck, GrantService } from '../../grants/service.ts';
import type { GrantRecord } from '../../store/store.ts';
import { type ByteRange, type ObjectBackend, type ObjectInfo, S3Error, type Verified } from './contracts.ts';
import { FsBackend, keySegments } from './fs-backend.ts';
import { deriveS3Secret, grantIdFromAccessKeyId } from './keys.ts';
import { SigningKeyCache, verifySigV4 } from './sigv4.ts';
import * as xml from './xml.ts';

/** Where the gateway is mounted on the broker: AWS_ENDPOINT_URL is `<publicUrl>/s3`. */
export const S3_PREFIX = '/s3';

/** S3 errors that mean a wrong key or signature: counted as failed authentication per source. */
const FAILED_AUTH = new Set(['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken']);

type Action = 'read' | 'write' | 'delete';

/** One S3 call after routing: which bucket and key, what it does, and the action a scope must allow. */
type Operation = { name: string; action: Action; bucket: string; key: string };

/** Who a verified request is: its grant, the scopes to check against, and the address it came from (audit). */
type Caller = { grant: GrantRecord; scopes: Scope[]; source: string };

/**
 * The S3-compatible gateway (docs/s3.md): a files resource is a bucket, a scope's path a key
 * prefix, and a grant's S3 keys (keys.ts) sign the requests. Every call is authenticated with
 * SigV4 against the grant, authorized against its scopes and actions, and recorded in the audit
 * trail (served or refused). Registered as its own Fastify scope: bodies stay raw streams, and
 * errors are S3's XML, not the control API's problem details.
 */
export function registerS3Gateway(
  app: FastifyInstance,
  options: { config: BrokerConfig; grants: GrantService; limiter: { check(source: string): void; recordFailure(source: string): void } },
): void {
  const { config, grants } = options;
  // Signing keys depend on secret, day and region only; lookupSecret still runs every request,
  // so a revoked grant is refused even while its key is cached.
  const signingKeys = new SigningKeyCache();
  // Access records written after a response ends; the broker waits for them before it closes its store.
  const audits = new PendingWrites();
  const backends = new Map<string, ObjectBackend>();
  const backend = (bucket: string): ObjectBackend => {
    let found = backends.get(bucket);
    if (!found) {
      const resource = config.resources[bucket];
      if (resource?.kind !== 'files') throw new S3Error('NoSuchBucket', 404, 'The specified bucket does not exist', { BucketName: bucket });
      found = new FsBackend(resource.root);
      backends.set(bucket, found);
    }
    return found;
  };

  app.addHook('onClose', () => audits.drain());
  app.register(
    async (s3) => {
      // Object bodies are streams the handlers read themselves (and SigV4 checks as they flow).
      s3.removeAllContentTypeParsers();
      s3.addContentTypeParser('*', (_request: FastifyRequest, _payload: IncomingMessage, done: (error: Error | null) => void) =>
        done(null),
      );
      s3.setErrorHandler((error: Error & { statusCode?: number }, request, reply) => {
        if (error instanceof RateLimitedError) reply.header('retry-after', String(error.retryAfterSeconds));
        const problem =
          error instanceof S3Error
            ? error
            : error instanceof RateLimitedError
              ? new S3Error('SlowDown', 503, 'Too many failed authentications from this address; slow down.')
              : error.statusCode && error.statusCode < 500
                ? new S3Error('InvalidRequest', error.statusCode, error.message)
                : new S3Error('InternalError', 500, 'We encountered an internal error. Please try again.');
        if (!(error instanceof S3Error) && problem.status >= 500) {
          process.stderr.write(`jit broker: unexpected error in S3 request ${request.id}: ${error.stack ?? error.message}\n`);
        }
        return sendS3Error(request, reply, problem);
      });
      s3.setNotFoundHandler((request, reply) =>
        sendS3Error(request, reply, new S3Error('MethodNotAllowed', 405, 'The specified method is not allowed against this resource.')),
      );
      for (const url of ['/', '/*']) {
        s3.route({ method: ['GET', 'HEAD', 'PUT', 'POST', 'DELETE'], url, handler: (request, reply) => handle(request, reply) });
      }
    },
    { prefix: S3_PREFIX },
  );

  async function handle(request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const rawUrl = request.raw.url ?? '';
    const queryAt = rawUrl.indexOf('?');
    const rawPath = queryAt === -1 ? rawUrl : rawUrl.slice(0, queryAt);
    const rawQuery = queryAt === -1 ? '' : rawUrl.slice(queryAt + 1);
    const query = new URLSearchParams(rawQuery);
    const headers = flatHeaders(request);
    // The grant is found once, by the credential in the session token, while SigV4 asks for the secret.
    let check: CredentialCheck | undefined;
    const lookupSecret = async (accessKeyId: string, sessionToken: string | undefined): Promise<string> => {
      const grantId = grantIdFromAccessKeyId(accessKeyId);
      if (!grantId) throw new S3Error('InvalidAccessKeyId', 403, 'The AWS Access Key Id you provided does not exist in our records.');
      if (!sessionToken) throw new S3Error('InvalidToken', 400, 'The provided token is malformed or otherwise invalid.');
      check = await grants.checkCredential(sessionToken);
      if (!check.grant || check.grant.id !== grantId) {
        throw new S3Error('InvalidAccessKeyId', 403, 'The AWS Access Key Id you provided does not exist in our records.');
      }
      return deriveS3Secret(sessionToken);
    };
    options.limiter.check(request.ip);
    let verified: Verified;
    try {
      verified = await verifySigV4({ method: request.method, rawPath, rawQuery, headers, now: grants.now() }, lookupSecret, {
        signingKeys,
      });
    } catch (error) {
      // Unknown keys and bad signatures are guesses for the per-source limit; an ended grant's holder is not.
      if (error instanceof S3Error && FAILED_AUTH.has(error.code)) options.limiter.recordFailure(request.ip);
      throw error;
    }
    const caller = await callerFor(check, request.ip);
    const operation = route(request.method, rawPath, query, headers);
    if (operation.name === 'ListBuckets') return listBuckets(reply, caller);
    try {
      // A key that is not plain (".." or "." segments, "//", NUL, ...) is refused before any scope
      // is compared with it: "train/../eval/x" must never count as under "train/".
      if (operation.key !== '') keySegments(operation.key);
      authorize(caller, operation, query);
    } catch (error) {
      await grants.recordDataAccess(caller.grant, { ...describe(operation), outcome: 'denied', status: 403 }, 'data.refused', request.ip);
      throw error;
    }
    const store = backend(operation.bucket);
    const body = request.method === 'PUT' || request.method === 'POST' ? verified.body(request.raw) : undefined;
    return serve(request, reply, caller, operation, store, query, headers, body);
  }

  /** The grant behind a verified request, if it is usable right now; a refusal is audited. */
  async function callerFor(check: CredentialCheck | undefined, source: string): Promise<Caller> {
    if (check?.usable) return { grant: check.grant, scopes: check.scopes, source };
    if (check?.grant) {
      await grants.recordDataAccess(check.grant, { reason: check.reason, state: check.grant.state }, 'data.refused', source);
    }
    if (check?.grant?.state === 'pending') throw new S3Error('AccessDenied', 403, `Grant ${check.grant.id} is waiting for approval.`);
    throw new S3Error('ExpiredToken', 400, 'The provided token has expired.');
  }

  async function serve(
    request: FastifyRequest,
    reply: FastifyReply,
    caller: Caller,
    operation: Operation,
    store: ObjectBackend,
    query: URLSearchParams,
    headers: Record<string, string>,
    body: Readable | undefined,
  ): Promise<unknown> {
    const { bucket, key } = operation;
    const record = (detail: Record<string, unknown>) =>
      grants.recordDataAccess(caller.grant, { ...describe(operation), ...detail }, `data.${operation.action}`, request.ip);
    // A change to the bucket is recorded before it is made (issue 7): the backend calls `announce`
    // once the change is ready and before it is visible, and makes it only if the record was written.
    let announced = false;
    const announce = async (detail: Record<string, unknown>) => {
      await record(detail);
      announced = true;
    };
    try {
      switch (operation.name) {
        case 'HeadBucket':
          await record({ outcome: 'allowed', status: 200 });
          return reply.status(200).send();
        case 'GetBucketLocation':
          await record({ outcome: 'allowed', status: 200 });
          return sendXml(reply, 200, xml.locationConstraintXml());
        case 'ListObjectsV2': {
          const maxKeys = query.has('max-keys') ? Number(query.get('max-keys')) : 1000;
          if (!Number.isInteger(maxKeys) || maxKeys < 0)
            throw new S3Error('InvalidArgument', 400, 'max-keys must be a non-negative integer');
          const listing = {
            prefix: query.get('prefix') ?? '',
            delimiter: query.get('delimiter') || undefined,
            continuationToken: query.get('continuation-token') ?? undefined,
            startAfter: query.get('start-after') ?? undefined,
            maxKeys: Math.min(maxKeys, 1000),
          };
          const result = await store.list(listing);
          await record({ outcome: 'allowed', status: 200, keys: result.keyCount });
          return sendXml(
            reply,
            200,
            xml.listObjectsV2Xml(bucket, listing, result, { encodingType: query.get('encoding-type') === 'url' ? 'url' : undefined }),
          );
        }
        case 'GetObject':
        case 'HeadObject':
          return await getObject(request, reply, caller, operation, store, headers, record);
        case 'PutObject': {
          const info = await store.put(key, body ?? emptyStream(), (object) =>
            announce({ outcome: 'allowed', status: 200, bytes: object.size, etag: object.etag }),
          );
          return reply.status(200).header('etag', info.etag).send();
        }
        case 'CreateMultipartUpload': {
          const uploadId = await store.createMultipartUpload(key, (id) => announce({ outcome: 'allowed', status: 200, uploadId: id }));
          return sendXml(reply, 200, xml.initiateMultipartUploadXml(bucket, key, uploadId));
        }
        case 'UploadPart': {
          const partNumber = Number(query.get('partNumber'));
          if (!Number.isInteger(partNumber) || partNumber < 1 || partNumber > 10_000) {
            throw new S3Error('InvalidArgument', 400, 'Part number must be an integer between 1 and 10000, inclusive');
          }
          const part = await store.uploadPart(key, query.get('uploadId') ?? '', partNumber, body ?? emptyStream(), (received) =>
            announce({ outcome: 'allowed', status: 200, bytes: received.size, etag: received.etag, partNumber }),
          );
          return reply.status(200).header('etag', part.etag).send();
        }
        case 'ListParts': {
          const uploadId = query.get('uploadId') ?? '';
          const parts = await store.listParts(key, uploadId);
          await record({ outcome: 'allowed', status: 200 });
          return sendXml(reply, 200, xml.listPartsXml(bucket, key, uploadId, parts));
        }
        case 'CompleteMultipartUpload': {
          const parts = xml.parseCompleteMultipartUpload(await readSmallBody(body));
          const info = await store.completeMultipartUpload(key, query.get('uploadId') ?? '', parts, (object) =>
            announce({ outcome: 'allowed', status: 200, bytes: object.size, etag: object.etag }),
          );
          const location = `${config.publicUrl ?? ''}${S3_PREFIX}/${bucket}/${encodeKey(key)}`;
          return sendXml(reply, 200, xml.completeMultipartUploadXml(location, bucket, key, info.etag));
        }
        case 'AbortMultipartUpload':
          await store.abortMultipartUpload(key, query.get('uploadId') ?? '', () => announce({ outcome: 'allowed', status: 204 }));
          return reply.status(204).send();
        case 'DeleteObject':
          await store.delete(key, () => announce({ outcome: 'allowed', status: 204 }));
          return reply.status(204).send();
        default:
          throw new S3Error('NotImplemented', 501, `${operation.name} is not implemented by the jit gateway`);
      }
    } catch (error) {
      // A refusal is recorded before it is answered. So is a change that failed after its record
      // was written, so that the trail does not say it was made; that second record is best effort.
      if (announced || (error instanceof S3Error && error.status < 500 && !reply.sent)) {
        const { code, status } = error instanceof S3Error ? error : { code: 'InternalError', status: 500 };
        const written = grants.recordDataAccess(
          caller.grant,
          { ...describe(operation), outcome: code, status },
          code === 'AccessDenied' ? 'data.refused' : `data.${operation.action}`,
          request.ip,
        );
        if (!announced) await written;
        else {
          await written.catch((failure: Error) =>
            process.stderr.write(
              `jit broker: could not record that S3 ${operation.name} of ${operation.bucket}/${operation.key} failed after its record: ${failure.message}\n`,
            ),
          );
        }
      }
      body?.resume();
      throw error;
    }
  }

  async function getObject(
    request: FastifyRequest,
    reply: FastifyReply,
    caller: Caller,
    operation: Operation,
    store: ObjectBackend,
    headers: Record<string, string>,
    record: (detail: Record<string, unknown>) => Promise<void>,
  ): Promise<unknown> {
    const object = await store.open(operation.key);
    if (!object) throw new S3Error('NoSuchKey', 404, 'The specified key does not exist.', { Key: operation.key });
    let streaming = false;
    try {
      const { info } = object;
      // A symbolic link: the file it leads to must be granted as well.
      if (info.realKey !== undefined) authorize(caller, { ...operation, key: info.realKey }, new URLSearchParams());
      reply.header('etag', info.etag).header('last-modified', info.lastModified.toUTCString()).header('accept-ranges', 'bytes');
      const precondition = checkConditions(headers, info);
      if (precondition === 304) {
        await record({ outcome: 'not_modified', status: 304 });
        return reply.status(304).send();
      }
      if (precondition === 412)
        throw new S3Error('PreconditionFailed', 412, 'At least one of the pre-conditions you specified did not hold');
      const range = headers.range ? parseRange(headers.range, info.size) : undefined;
      const length = range ? range.end - range.start + 1 : info.size;
      reply.header('content-type', 'application/octet-stream').header('content-length', length);
      if (range) reply.header('content-range', `bytes ${range.start}-${range.end}/${info.size}`);
      const status = range ? 206 : 200;
      if (request.method === 'HEAD') {
        await record({ outcome: 'allowed', status, bytes: 0 });
        return reply.status(status).send();
      }
      const stream = grants.trackStream(caller.grant.id, object.stream(range), length);
      streaming = true;
      // Recorded when the response ends, with the bytes that really went out (a cut transfer says so).
      reply.raw.once('close', () => {
        const sent = (stream as Readable & { bytesRead?: number }).bytesRead ?? 0;
        const done = reply.raw.writableFinished;
        audits.track(
          record({
            outcome: done ? 'allowed' : 'cut',
            status,
            bytes: done ? length : Math.min(sent, length),
            ...(range ? { range: `${range.start}-${range.end}` } : {}),
          }),
        );
      });
      return reply.status(status).send(stream);
    } finally {
      if (!streaming) await object.close();
    }
  }

  async function listBuckets(reply: FastifyReply, caller: Caller): Promise<unknown> {
    const buckets = [...new Set(caller.scopes.map((scope) => scope.resource))].filter((name) => config.resources[name]);
    await grants.recordDataAccess(caller.grant, { operation: 'ListBuckets', outcome: 'allowed', status: 200 }, 'data.read', caller.source);
    return sendXml(reply, 200, xml.listBucketsXml(buckets, new Date(caller.grant.createdAt)));
  }
}

/** Writes started after a response ended, awaited on close so none is lost to a shutdown. */
class PendingWrites {
  readonly #pending = new Set<Promise<unknown>>();

  track(write: Promise<unknown>): void {
    const settled = write
      .catch((error: Error) => process.stderr.write(`jit broker: could not record an S3 access: ${error.message}\n`))
      .finally(() => this.#pending.delete(settled));
    this.#pending.add(settled);
  }

  async drain(): Promise<void> {
    while (this.#pending.size > 0) await Promise.all(this.#pending);
  }
}

/** Which S3 operation a request is (path-style: /s3/<bucket>/<key>). */
function route(method: string, rawPath: string, query: URLSearchParams, headers: Record<string, string>): Operation {
  const rest = rawPath.slice(S3_PREFIX.length).replace(/^\//, '');
  const slash = rest.indexOf('/');
  const bucket = decode(slash === -1 ? rest : rest.slice(0, slash));
  const key = slash === -1 ? '' : decode(rest.slice(slash + 1));
  const op = (name: string, action: Action): Operation => ({ name, action, bucket, key });
  if (bucket === '') {
    if (method === 'GET') return op('ListBuckets', 'read');
    throw new S3Error('MethodNotAllowed', 405, 'The specified method is not allowed against this resource.');
  }
  if (key === '') {
    if (method === 'HEAD') return op('HeadBucket', 'read');
    if (method === 'GET' && query.has('location')) return op('GetBucketLocation', 'read');
    if (method === 'GET' && query.get('list-type') === '2') return op('ListObjectsV2', 'read');
    if (method === 'GET' && query.has('uploads')) return op('ListMultipartUploads', 'write');
    if (method === 'GET') throw new S3Error('NotImplemented', 501, 'Only ListObjectsV2 (list-type=2) is implemented by the jit gateway');
    if (method === 'POST' && query.has('delete')) return op('DeleteObjects', 'delete');
    throw new S3Error('MethodNotAllowed', 405, 'The specified method is not allowed against this resource.');
  }
  if (headers['x-amz-copy-source']) return op('CopyObject', 'write');
  switch (method) {
    case 'GET':
      return query.has('uploadId') ? op('ListParts', 'write') : op('GetObject', 'read');
    case 'HEAD':
      return op('HeadObject', 'read');
    case 'PUT':
      return query.has('uploadId') ? op('UploadPart', 'write') : op('PutObject', 'write');
    case 'POST':
      if (query.has('uploads')) return op('CreateMultipartUpload', 'write');
      if (query.has('uploadId')) return op('CompleteMultipartUpload', 'write');
      break;
    case 'DELETE':
      return query.has('uploadId') ? op('AbortMultipartUpload', 'write') : op('DeleteObject', 'delete');
  }
  throw new S3Error('MethodNotAllowed', 405, 'The specified method is not allowed against this resource.');
}

/**
 * Whether the grant allows the operation: a scope on this bucket with this action that covers
 * the key (or, for a listing, the whole prefix asked for: `train/` under a `datasets/train` scope).
 */
function authorize(caller: Caller, operation: Operation, query: URLSearchParams): void {
  const scopes = caller.scopes.filter((scope) => scope.resource === operation.bucket && scope.action === operation.action);
  const denied = (what: string) =>
    new S3Error('AccessDenied', 403, `Access Denied: grant ${caller.grant.id} does not allow ${operation.action} on ${what}`);
  if (operation.name === 'HeadBucket' || operation.name === 'GetBucketLocation') {
    if (!caller.scopes.some((scope) => scope.resource === operation.bucket)) throw denied(operation.bucket);
    return;
  }
  if (operation.name === 'ListObjectsV2') {
    const prefix = query.get('prefix') ?? '';
    if (!scopes.some((scope) => scope.path === '' || prefix.startsWith(`${scope.path}/`))) {
      const granted = scopes.map((scope) => `${scope.path}/`).join(', ');
      throw new S3Error(
        'AccessDenied',
        403,
        `Access Denied: grant ${caller.grant.id} lists only under ${granted || 'nothing in this bucket'} (prefix "${prefix}")`,
      );
    }
    return;
  }
  if (!scopes.some((scope) => scopeCovers(scope, operation.key))) throw denied(`${operation.bucket}/${operation.key}`);
}

function describe(operation: Operation): Record<string, unknown> {
  return { operation: operation.name, resource: operation.bucket, key: operation.key, action: operation.action };
}

function decode(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new S3Error('InvalidURI', 400, "Couldn't parse the specified URI.");
  }
}

function encodeKey(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/');
}

function flatHeaders(request: FastifyRequest): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(request.headers)) {
    if (value !== undefined) headers[name.toLowerCase()] = Array.isArray(value) ? value.join(',') : value;
  }
  return headers;
}

/** A single `bytes=` range (the only kind S3 serves), clamped to the object; unsatisfiable → 416 InvalidRange. */
export function parseRange(header: string, size: number): ByteRange | undefined {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match) return undefined; // S3 ignores a malformed Range and sends the whole object
  const [, first = '', last = ''] = match;
  if (first === '' && last === '') return undefined;
  let start: number;
  let end: number;
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0) throw new S3Error('InvalidRange', 416, 'The requested range is not satisfiable', { RangeRequested: header });
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(first);
    end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
    if (start >= size || end < start) {
      throw new S3Error('InvalidRange', 416, 'The requested range is not satisfiable', {
        RangeRequested: header,
        ActualObjectSize: String(size),
      });
    }
  }
  return { start, end };
}

/** If-Match / If-None-Match / If-Modified-Since / If-Unmodified-Since, in S3's order of precedence. */
function checkConditions(headers: Record<string, string>, info: ObjectInfo): 200 | 304 | 412 {
  const etags = (value: string) => value.split(',').map((tag) => tag.trim().replace(/^W\//, ''));
  const modified = Math.floor(info.lastModified.getTime() / 1000) * 1000;
  const ifMatch = headers['if-match'];
  const ifNoneMatch = headers['if-none-match'];
  if (ifMatch !== undefined && !etags(ifMatch).some((tag) => tag === '*' || tag === info.etag)) return 412;
  const ifUnmodifiedSince = headers['if-unmodified-since'];
  if (ifMatch === undefined && ifUnmodifiedSince !== undefined && modified > Date.parse(ifUnmodifiedSince)) return 412;
  if (ifNoneMatch !== undefined) return etags(ifNoneMatch).some((tag) => tag === '*' || tag === info.etag) ? 304 : 200;
  const ifModifiedSince = headers['if-modified-since'];
  if (ifModifiedSince !== undefined && modified <= Date.parse(ifModifiedSince)) return 304;
  return 200;
}

function sendXml(reply: FastifyReply, status: number, body: string): FastifyReply {
  return reply.status(status).header('content-type', 'application/xml').send(body);
}

/** Whether a raw request URL is the gateway's (`/s3`, `/s3/...`, `/s3?...`). */
export function isS3Path(rawUrl: string): boolean {
  return rawUrl === S3_PREFIX || rawUrl.startsWith(`${S3_PREFIX}/`) || rawUrl.startsWith(`${S3_PREFIX}?`);
}

/** S3's XML error body (and no body for HEAD), with the request id S3 clients log. */
export function sendS3Error(request: FastifyRequest, reply: FastifyReply, error: S3Error): FastifyReply {
  const resource = (request.raw.url ?? '').split('?')[0] ?? '';
  reply.header('x-amz-request-id', request.id);
  if (request.method === 'HEAD') return reply.status(error.status).send();
  return sendXml(reply, error.status, xml.errorXml(error.code, error.message, resource, request.id, error.detail));
}

/** The CompleteMultipartUpload body: small XML, capped at 1 MiB. */
async function readSmallBody(body: Readable | undefined): Promise<string> {
  if (!body) return '';
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    if (size > 1 << 20) throw new S3Error('MaxMessageLengthExceeded', 400, 'Your request was too big.');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function emptyStream(): Readable {
  const stream = new PassThrough();
  stream.end();
  return stream;
}
