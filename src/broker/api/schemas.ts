import { GRANT_ID, GRANT_STATES } from '../../core/grant.ts';

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
  },
} as const;

export const grantIdParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: GRANT_ID.source } },
} as const;

const timestamp = { type: 'string', format: 'date-time' } as const;
const nullableTimestamp = { type: ['string', 'null'], format: 'date-time' } as const;

export const grantViewSchema = {
  type: 'object',
  required: ['id', 'subject', 'scopes', 'state', 'createdAt', 'expiresAt', 'heartbeatDeadline', 'heartbeatIntervalSeconds'],
  properties: {
    id: { type: 'string', pattern: GRANT_ID.source },
    subject: { type: 'string' },
    scopes: { type: 'array', items: { type: 'string' } },
    reason: { type: ['string', 'null'] },
    state: { type: 'string', enum: [...GRANT_STATES] },
    createdAt: timestamp,
    expiresAt: timestamp,
    heartbeatDeadline: timestamp,
    heartbeatIntervalSeconds: { type: 'integer' },
    endedAt: nullableTimestamp,
    endReason: { type: ['string', 'null'] },
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
  },
} as const;

export const errorSchema = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string', description: 'stable, for scripts (docs/exit-codes.md)' },
        message: { type: 'string' },
        hint: { type: 'string', description: 'what to do about it' },
        requestId: { type: 'string', description: 'the x-request-id of the request, for the broker log' },
      },
    },
  },
} as const;
