import { auditPageSchema, auditQuerySchema, auditStreamQuerySchema } from './audit-routes.ts';
import {
  approveRequestSchema,
  createdTokenSchema,
  denyRequestSchema,
  errorSchema,
  grantIdParams,
  grantListQuery,
  grantRequestSchema,
  grantViewSchema,
  issuedGrantSchema,
  oidcExchangeSchema,
  oidcSessionSchema,
  receiptSchema,
  renewRequestSchema,
  tokenIdParams,
  tokenRequestSchema,
  tokenRevocationSchema,
  tokenViewSchema,
  whoamiSchema,
} from './schemas.ts';

const json = (schema: unknown) => ({ content: { 'application/json': { schema } } });
const problem = (schema: unknown) => ({ content: { 'application/problem+json': { schema } } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const errors = (...statuses: number[]) =>
  Object.fromEntries(
    statuses.map((status) => [String(status), { description: ERROR_MEANINGS[status] ?? 'error', ...problem(ref('Error')) }]),
  );

const ERROR_MEANINGS: Record<number, string> = {
  400: 'invalid request: bad body, scope, resource, action or TTL',
  401: 'no valid token (API token or CI session on control routes, grant credential on /v1/files, a refused OIDC token on /v1/auth/oidc)',
  403: "denied by policy, outside the grant, or (code forbidden) the token's roles do not allow the call",
  404: 'no such grant (for this principal), token or file',
  409: 'the grant has ended, is not pending (approve, deny), was already reviewed by you, or cannot be renewed further',
  429: 'too many failed authentications from this address; retry after the retry-after header',
  503: "a dependency of the broker is down (a postgres resource's database, a CI issuer's keys); retry later",
};

const grantId = [{ name: 'id', in: 'path', required: true, schema: grantIdParams.properties.id }];
const tokenId = [{ name: 'id', in: 'path', required: true, schema: tokenIdParams.properties.id }];
const apiToken = [{ apiToken: [] }];

/**
 * The OpenAPI 3.1 document of the broker's /v1 API, served at GET /v1/openapi.json and kept in
 * docs/openapi.json (`jit broker openapi`). test/integration/openapi.test.ts fails when the routes
 * the broker registers and the paths here disagree.
 */
export function openApiDocument(version: string) {
  return {
    openapi: '3.1.0',
    info: { title: 'jit broker API', version, description: 'Just-in-time grants for AI workloads. Reference: docs/api.md.' },
    components: {
      securitySchemes: {
        apiToken: { type: 'http', scheme: 'bearer', description: "a principal API token (jit_...), or a CI job's OIDC session (jits_...)" },
        grantCredential: { type: 'http', scheme: 'bearer', description: 'a grant credential (jitc_...), as `jit run` gives a job' },
        s3SigV4: {
          type: 'apiKey',
          in: 'header',
          name: 'Authorization',
          description:
            "AWS Signature Version 4 with the grant's S3 keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN); docs/s3.md",
        },
      },
      schemas: {
        GrantRequest: grantRequestSchema,
        RenewRequest: renewRequestSchema,
        ApproveRequest: approveRequestSchema,
        DenyRequest: denyRequestSchema,
        Grant: grantViewSchema,
        IssuedGrant: issuedGrantSchema,
        Receipt: receiptSchema,
        Whoami: whoamiSchema,
        OidcExchange: oidcExchangeSchema,
        OidcSession: oidcSessionSchema,
        TokenRequest: tokenRequestSchema,
        Token: tokenViewSchema,
        CreatedToken: createdTokenSchema,
        TokenRevocation: tokenRevocationSchema,
        Error: errorSchema,
      },
    },
    paths: {
      '/v1/health': {
        get: {
          summary: 'liveness and version',
          security: [],
          responses: {
            '200': { description: 'up', ...json({ type: 'object', properties: { status: { const: 'ok' }, version: { type: 'string' } } }) },
          },
        },
      },
      '/v1/openapi.json': {
        get: {
          summary: 'this document',
          security: [],
          responses: { '200': { description: 'the OpenAPI document', ...json({ type: 'object' }) } },
        },
      },
      '/v1/whoami': {
        get: {
          summary: 'the principal behind the token, its roles and token id (any role)',
          security: apiToken,
          responses: {
            '200': { description: 'the caller', ...json(ref('Whoami')) },
            ...errors(401),
          },
        },
      },
      '/v1/auth/oidc': {
        post: {
          summary:
            "exchange a CI job's OIDC identity token for a requester session (docs/ci.md#oidc); every exchange and refusal is audited",
          security: [],
          requestBody: { required: true, ...json(ref('OidcExchange')) },
          responses: {
            '201': { description: 'the session; its bearer is in this response only', ...json(ref('OidcSession')) },
            ...errors(400, 401, 429, 503),
          },
        },
      },
      '/v1/grants': {
        post: {
          summary: 'request a grant; policy decides (requester)',
          security: apiToken,
          requestBody: { required: true, ...json(ref('GrantRequest')) },
          responses: {
            '201': { description: 'issued: active now', ...json(ref('IssuedGrant')) },
            '202': {
              description: 'pending approval: the credential is refused until approved; poll GET /v1/grants/{id} or heartbeat it',
              ...json(ref('IssuedGrant')),
            },
            ...errors(400, 401, 403),
          },
        },
        get: {
          summary: "the caller's grants (requester), or with all=true every principal's (auditor), newest first",
          security: apiToken,
          parameters: [{ name: 'all', in: 'query', required: false, schema: grantListQuery.properties.all }],
          responses: {
            '200': { description: 'grants', ...json({ type: 'object', properties: { grants: { type: 'array', items: ref('Grant') } } }) },
            ...errors(401),
          },
        },
      },
      '/v1/grants/{id}': {
        get: {
          summary: "one grant: your own (requester), or anyone's (auditor)",
          security: apiToken,
          parameters: grantId,
          responses: { '200': { description: 'the grant', ...json(ref('Grant')) }, ...errors(400, 401, 403, 404) },
        },
        delete: {
          summary: "revoke now (idempotent); returns a receipt. Your own (requester), or anyone's (admin)",
          security: apiToken,
          parameters: grantId,
          responses: { '200': { description: 'receipt', ...json(ref('Receipt')) }, ...errors(400, 401, 403, 404) },
        },
      },
      '/v1/grants/{id}/heartbeat': {
        post: {
          summary: "keep a grant's holder alive (requester, own grants)",
          security: apiToken,
          parameters: grantId,
          responses: { '200': { description: 'the grant, new deadline', ...json(ref('Grant')) }, ...errors(400, 401, 403, 404, 409) },
        },
      },
      '/v1/grants/{id}/renew': {
        post: {
          summary: "move a live grant's expiry to now + ttlSeconds, never past its policy's maxTtl from activation (requester, own grants)",
          security: apiToken,
          parameters: grantId,
          requestBody: json(ref('RenewRequest')),
          responses: {
            '200': { description: 'the grant, new expiry; same credential', ...json(ref('Grant')) },
            ...errors(400, 401, 403, 404, 409),
          },
        },
      },
      '/v1/approvals': {
        get: {
          summary: 'pending requests the caller may approve or deny (approver), oldest first',
          security: apiToken,
          responses: {
            '200': { description: 'grants', ...json({ type: 'object', properties: { grants: { type: 'array', items: ref('Grant') } } }) },
            ...errors(401, 403),
          },
        },
      },
      '/v1/grants/{id}/approve': {
        post: {
          summary: 'approve a pending request (approver named by its rule; never your own); active once every rule has its count',
          security: apiToken,
          parameters: grantId,
          requestBody: json(ref('ApproveRequest')),
          responses: { '200': { description: 'the grant', ...json(ref('Grant')) }, ...errors(400, 401, 403, 404, 409) },
        },
      },
      '/v1/grants/{id}/deny': {
        post: {
          summary: 'deny a pending request, with a reason the requester sees (approver named by its rule)',
          security: apiToken,
          parameters: grantId,
          requestBody: json(ref('DenyRequest')),
          responses: { '200': { description: 'the grant, now denied', ...json(ref('Grant')) }, ...errors(400, 401, 403, 404, 409) },
        },
      },
      '/v1/tokens': {
        post: {
          summary: 'mint an API token for a principal (admin); the token is in this response only',
          security: apiToken,
          requestBody: { required: true, ...json(ref('TokenRequest')) },
          responses: { '201': { description: 'minted', ...json(ref('CreatedToken')) }, ...errors(400, 401, 403) },
        },
        get: {
          summary: 'every API token, revoked ones too, oldest first (admin); never a token or its hash',
          security: apiToken,
          responses: {
            '200': { description: 'tokens', ...json({ type: 'object', properties: { tokens: { type: 'array', items: ref('Token') } } }) },
            ...errors(401, 403),
          },
        },
      },
      '/v1/tokens/{id}': {
        delete: {
          summary: 'revoke an API token now, on every replica (admin; idempotent)',
          security: apiToken,
          parameters: tokenId,
          responses: { '200': { description: 'what was revoked', ...json(ref('TokenRevocation')) }, ...errors(400, 401, 403, 404) },
        },
      },
      '/v1/audit': {
        get: {
          summary:
            'sealed audit records matching the filters, in chain order, a page at a time (auditor: every record; requester: its own)',
          security: apiToken,
          parameters: queryParameters(auditQuerySchema.properties),
          responses: { '200': { description: 'a page of records', ...json(auditPageSchema) }, ...errors(400, 401, 403) },
        },
      },
      '/v1/audit/stream': {
        get: {
          summary:
            'server-sent events: each new record matching the filters as `event: audit` with its seq as the id; send Last-Event-ID to resume',
          security: apiToken,
          parameters: [
            ...queryParameters(auditStreamQuerySchema.properties),
            {
              name: 'Last-Event-ID',
              in: 'header',
              schema: { type: 'string' },
              description: 'resume after this seq (sent by EventSource on reconnect)',
            },
          ],
          responses: {
            '200': { description: 'the event stream', content: { 'text/event-stream': { schema: { type: 'string' } } } },
            ...errors(400, 401, 403),
          },
        },
      },
      '/v1/audit/verify': {
        get: {
          summary: 're-compute the whole hash chain and check every signed checkpoint (auditor); ok false names the first bad record',
          security: apiToken,
          responses: { '200': { description: 'the verification report', ...json(verifyReportSchema) }, ...errors(401, 403) },
        },
      },
      '/v1/audit/key': {
        get: {
          summary: 'the public Ed25519 key checkpoints are signed with (any principal)',
          security: apiToken,
          responses: {
            '200': {
              description: 'the key',
              ...json({
                type: 'object',
                properties: {
                  keyId: { type: 'string' },
                  algorithm: { const: 'Ed25519' },
                  publicKey: { type: 'string', description: 'SPKI PEM' },
                },
              }),
            },
            ...errors(401),
          },
        },
      },
      '/v1/files/{path}': {
        get: {
          summary: 'read a file, or list a directory, under the granted prefix',
          security: [{ grantCredential: [] }],
          parameters: [
            { name: 'path', in: 'path', required: true, schema: { type: 'string' }, description: 'RESOURCE/PATH; may contain "/"' },
          ],
          responses: {
            '200': {
              description: 'the file (octet-stream) or a directory listing (JSON)',
              content: {
                'application/octet-stream': { schema: { type: 'string', format: 'binary' } },
                'application/json': { schema: { type: 'object' } },
              },
            },
            ...errors(400, 401, 403, 404),
          },
        },
      },
      '/proxy/{resource}/{path}': apiProxy(),
      '/s3': s3Gateway(undefined),
      '/s3/{path}': s3Gateway('BUCKET or BUCKET/KEY'),
    },
  };
}

/** Query-string parameters from a route's querystring schema properties. */
function queryParameters(properties: Record<string, { description?: string }>) {
  return Object.entries(properties).map(([name, schema]) => ({
    name,
    in: 'query',
    schema,
    ...(schema.description ? { description: schema.description } : {}),
  }));
}

const verifyReportSchema = {
  type: 'object',
  required: ['ok', 'records', 'checkpoint', 'head', 'problem', 'unsealed', 'elapsedMs'],
  properties: {
    ok: { type: 'boolean' },
    records: { type: 'integer', description: 'records verified before the first problem (all of them when ok)' },
    checkpoint: {
      type: ['object', 'null'],
      description: 'the last signed checkpoint the verified records reach',
      properties: { position: { type: 'integer' }, at: { type: 'string' }, keyId: { type: 'string' }, hash: { type: 'string' } },
    },
    head: { type: ['object', 'null'], properties: { position: { type: 'integer' }, hash: { type: 'string' } } },
    problem: {
      type: ['object', 'null'],
      properties: {
        kind: { enum: ['altered', 'missing', 'rewritten', 'truncated', 'bad-signature', 'untrusted-key', 'out-of-order'] },
        position: { type: 'integer' },
        message: { type: 'string' },
      },
    },
    unsealed: { type: 'integer', description: 'records appended but not sealed yet (not covered)' },
    elapsedMs: { type: 'number' },
  },
} as const;

/** The API proxy (docs/http.md): whatever the upstream API speaks, under the grant's method and path scopes. */
function apiProxy() {
  const operation = (method: string) => ({
    summary: `${method} to the upstream API named {resource}, at {path} relative to its base URL, with the upstream secret added (docs/http.md)`,
    security: [{ grantCredential: [] }],
    parameters: [
      { name: 'resource', in: 'path', required: true, schema: { type: 'string' }, description: 'the http resource (API) name' },
      {
        name: 'path',
        in: 'path',
        required: true,
        schema: { type: 'string' },
        description: "the upstream path, allowed by a scope's METHOD /pattern",
      },
    ],
    responses: {
      default: { description: "the upstream's response, streamed, with the upstream secret blanked" },
      ...errors(401, 403, 404),
    },
  });
  return { get: operation('GET'), post: operation('POST'), put: operation('PUT'), patch: operation('PATCH'), delete: operation('DELETE') };
}

/**
 * The S3-compatible gateway speaks the S3 REST API (docs/s3.md), not this API's JSON: it is listed
 * so the document names every route, with S3's own reference as its contract.
 */
function s3Gateway(path: string | undefined) {
  const operation = (summary: string) => ({
    summary: `${summary} (S3 REST API, AWS Signature Version 4 with the grant's S3 keys; docs/s3.md)`,
    security: [{ s3SigV4: [] }],
    ...(path ? { parameters: [{ name: 'path', in: 'path', required: true, schema: { type: 'string' }, description: path }] } : {}),
    responses: {
      default: { description: "S3's responses and XML error bodies", content: { 'application/xml': { schema: { type: 'string' } } } },
    },
  });
  return path
    ? {
        get: operation('ListObjectsV2, GetObject, ListParts, GetBucketLocation'),
        put: operation('PutObject, UploadPart'),
        post: operation('CreateMultipartUpload, CompleteMultipartUpload'),
        delete: operation('DeleteObject, AbortMultipartUpload'),
      }
    : {
        get: operation('ListBuckets: the buckets the grant has scopes in'),
        put: operation('not allowed (405)'),
        post: operation('not allowed (405)'),
        delete: operation('not allowed (405)'),
      };
}
