import { ROLES } from '../../core/caller.ts';
import { GRANT_ID, GRANT_STATES } from '../../core/grant.ts';
import { TOKEN_ID } from '../../core/token.ts';

/**
 * JSON Schemas of the /v1 API: the request ones validate on the routes (server.ts), and all of
 * them make up the OpenAPI document (openapi.ts), so the two cannot drift apart.
 */
export const grantRequestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['scopes'],
  properties: {
    scopes: {
      type: 'array',
      minItems: 1,
      maxItems: 32,
      items: { type: 'string', minLength: 1, maxLength: 512 },
      description: 'scopes the job needs (docs/scopes.md)',
    },
    ttlSeconds: { type: 'integer', minimum: 1, description: 'requested lifetime; the policy default when left out, capped by its maxTtl' },
    reason: { type: 'string', maxLength: 500, description: 'why, kept with the grant and in the audit trail' },
    heartbeat: {
      type: 'boolean',
      description:
        'true (default): the requester heartbeats from now on, and the grant lapses when it stops. false: nobody holds it yet (jit request); the first heartbeat starts the clock',
    },
  },
} as const;

export const renewRequestSchema = {
  type: ['object', 'null'],
  additionalProperties: false,
  properties: {
    ttlSeconds: {
      type: 'integer',
      minimum: 1,
      description: "new lifetime from now; the grant's own TTL when left out; never past the policy's maxTtl from activation",
    },
  },
} as const;

export const approveRequestSchema = {
  type: ['object', 'null'],
  additionalProperties: false,
  properties: { reason: { type: 'string', maxLength: 500, description: 'why, kept in the audit trail' } },
} as const;

export const denyRequestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['reason'],
  properties: {
    reason: { type: 'string', minLength: 1, maxLength: 500, description: 'why, shown to the requester and kept in the audit trail' },
  },
} as const;

export const grantIdParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: GRANT_ID.source } },
} as const;

export const grantListQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    all: {
      type: 'string',
      enum: ['true', 'false'],
      description: "true: every principal's grants (auditor or admin role); otherwise the caller's own (requester role)",
    },
  },
} as const;

export const tokenRequestSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['subject', 'roles'],
  properties: {
    subject: { type: 'string', minLength: 1, maxLength: 200, description: 'who the token is for: user:NAME' },
    roles: {
      type: 'array',
      minItems: 1,
      maxItems: ROLES.length,
      items: { type: 'string', enum: [...ROLES] },
      description: 'what it may do (docs/principals.md)',
    },
    label: { type: 'string', minLength: 1, maxLength: 100, description: 'what it is for, shown in lists' },
  },
} as const;

export const tokenIdParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: TOKEN_ID.source } },
} as const;

const timestamp = { type: 'string', format: 'date-time' } as const;
const nullableTimestamp = { type: ['string', 'null'], format: 'date-time' } as const;

export const grantViewSchema = {
  type: 'object',
  required: [
    'id',
    'subject',
    'scopes',
    'state',
    'createdAt',
    'activatedAt',
    'expiresAt',
    'ttlSeconds',
    'heartbeatDeadline',
    'heartbeatIntervalSeconds',
    'approval',
  ],
  properties: {
    id: { type: 'string', pattern: GRANT_ID.source },
    subject: { type: 'string' },
    scopes: { type: 'array', items: { type: 'string' } },
    reason: { type: ['string', 'null'] },
    state: { type: 'string', enum: [...GRANT_STATES] },
    createdAt: timestamp,
    activatedAt: { ...nullableTimestamp, description: 'when it became usable; null while pending' },
    expiresAt: { ...nullableTimestamp, description: 'when it stops being usable; null while pending' },
    ttlSeconds: { type: 'integer', description: 'the lifetime asked for: what approval starts and a renewal extends by' },
    heartbeatDeadline: { ...nullableTimestamp, description: 'null while no process holds it (jit request)' },
    heartbeatIntervalSeconds: { type: 'integer' },
    endedAt: nullableTimestamp,
    endReason: { type: ['string', 'null'] },
    deprovision: {
      type: 'string',
      enum: ['pending'],
      description: "present while an ended grant's database role is still to be dropped (retried until done; docs/postgres.md)",
    },
    approval: {
      type: ['object', 'null'],
      description: 'where a request that needed approval stands; null when its policy needed none',
      required: ['deadline', 'requirements', 'deniedBy'],
      properties: {
        deadline: { ...timestamp, description: 'when a pending request times out' },
        requirements: {
          type: 'array',
          description: 'one per approval rule its scopes fall under; all must be met',
          items: {
            type: 'object',
            required: ['scopes', 'approvers', 'count', 'approvedBy'],
            properties: {
              scopes: { type: 'array', items: { type: 'string' } },
              approvers: { type: 'array', items: { type: 'string' }, description: 'user:NAME or group:NAME' },
              count: { type: 'integer', description: 'distinct approvals needed, never the requester' },
              approvedBy: { type: 'array', items: { type: 'string' } },
            },
          },
        },
        deniedBy: {
          type: ['object', 'null'],
          properties: { approver: { type: 'string' }, reason: { type: ['string', 'null'] } },
        },
      },
    },
  },
} as const;

export const issuedGrantSchema = {
  allOf: [
    { $ref: '#/components/schemas/Grant' },
    {
      type: 'object',
      required: ['credential', 'env'],
      properties: {
        credential: { type: 'string', description: 'the grant credential, shown this once and stored only as a hash' },
        env: { type: 'object', additionalProperties: { type: 'string' }, description: 'the variables the job gets (docs/run.md)' },
      },
    },
  ],
} as const;

export const receiptSchema = {
  type: 'object',
  required: ['id', 'state', 'revokedAt', 'alreadyEnded', 'actions'],
  properties: {
    id: { type: 'string' },
    state: { type: 'string' },
    revokedAt: nullableTimestamp,
    alreadyEnded: { type: 'boolean' },
    actions: { type: 'array', items: { type: 'string' } },
    deprovision: {
      type: 'string',
      enum: ['pending'],
      description: "present when the grant's database role could not be dropped yet: retried with back-off until done (docs/postgres.md)",
    },
  },
} as const;

/** RFC 9457 problem details, served as application/problem+json (docs/api.md#errors). */
export const errorSchema = {
  type: 'object',
  required: ['type', 'title', 'status', 'detail', 'code', 'requestId'],
  properties: {
    type: { type: 'string', description: 'urn:jit:error:<code>' },
    title: { type: 'string', description: 'the HTTP status text' },
    status: { type: 'integer' },
    detail: { type: 'string', description: 'what went wrong, in one line' },
    instance: { type: 'string', description: 'the request path' },
    code: { type: 'string', description: 'stable, for scripts (docs/exit-codes.md)' },
    hint: { type: 'string', description: 'what to do about it' },
    requestId: { type: 'string', description: 'the x-request-id of the request, for the broker log' },
  },
} as const;

export const tokenViewSchema = {
  type: 'object',
  required: ['tokenId', 'subject', 'roles', 'label', 'createdBy', 'createdAt', 'revokedAt'],
  properties: {
    tokenId: { type: 'string', pattern: TOKEN_ID.source, description: 'public id, for lists and revoke' },
    subject: { type: 'string' },
    roles: { type: 'array', items: { type: 'string', enum: [...ROLES] } },
    label: { type: ['string', 'null'] },
    createdBy: { type: ['string', 'null'], description: 'the admin who minted it, or local:broker-host (init, --dir)' },
    createdAt: timestamp,
    revokedAt: nullableTimestamp,
  },
} as const;

export const createdTokenSchema = {
  allOf: [
    { $ref: '#/components/schemas/Token' },
    {
      type: 'object',
      required: ['token'],
      properties: { token: { type: 'string', description: 'the API token, shown this once and stored only as a hash' } },
    },
  ],
} as const;

export const tokenRevocationSchema = {
  type: 'object',
  required: ['tokenId', 'subject', 'revokedAt', 'alreadyRevoked'],
  properties: {
    tokenId: { type: 'string', pattern: TOKEN_ID.source },
    subject: { type: 'string' },
    revokedAt: timestamp,
    alreadyRevoked: { type: 'boolean' },
  },
} as const;

export const whoamiSchema = {
  type: 'object',
  required: ['subject', 'roles', 'tokenId'],
  properties: {
    subject: { type: 'string' },
    roles: { type: 'array', items: { type: 'string', enum: [...ROLES] } },
    tokenId: { type: 'string', pattern: `${TOKEN_ID.source}|^ses_[0-9a-f]{20}$`, description: 'the API token id, or a CI session id' },
    expiresAt: { type: 'string', format: 'date-time', description: 'for a CI session only: when it ends' },
  },
} as const;

export const oidcExchangeSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['token'],
  properties: {
    token: {
      type: 'string',
      minLength: 1,
      maxLength: 16384,
      description: "the CI system's OIDC identity token (a JWT), with an audience the broker accepts",
    },
  },
} as const;

export const oidcSessionSchema = {
  type: 'object',
  required: ['session', 'sessionId', 'subject', 'issuer', 'roles', 'expiresAt'],
  properties: {
    session: { type: 'string', description: 'the session bearer (jits_...), in this response only; send it as Authorization: Bearer' },
    sessionId: { type: 'string', pattern: '^ses_[0-9a-f]{20}$' },
    subject: {
      type: 'string',
      description: "the CI identity, from the issuer's subject template, e.g. ci:github:acme/train@refs/heads/main",
    },
    issuer: { type: 'string', description: "the issuer's name in broker.yaml" },
    roles: { type: 'array', items: { type: 'string', enum: ['requester'] } },
    expiresAt: {
      type: 'string',
      format: 'date-time',
      description: "when the session ends; the caller's grant TTLs are cut to it (one that waits for approval counts from the approval)",
    },
  },
} as const;
