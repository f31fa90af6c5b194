import { z } from 'zod';
import { GRANT_ID, GRANT_STATES } from '../core/grant.ts';
import { TOKEN_ID } from '../core/token.ts';

/**
 * The `--json` output of every command, as zod schemas: the one source of truth that
 * docs/cli.md's JSON parts are generated from (test/unit/cli-docs.test.ts) and that the real
 * bin/jit's output is checked against (test/e2e/cli-json-shapes.test.ts). Objects are strict, so a
 * field added, renamed or dropped in a handler fails those tests until this file (and the docs)
 * follow.
 *
 * Only docs generation and tests import this file: the CLI must not load zod to print
 * `jit grants` (start-up time). Handler types stay in step through the type checks of
 * test/unit/cli-shapes.test.ts.
 */

/** An ISO 8601 UTC date-time, as `Date#toISOString` writes it. */
const dateTime = z.iso.datetime();
const grantId = z.string().regex(GRANT_ID);
const tokenId = z.string().regex(TOKEN_ID);
const sessionId = z.string().regex(/^ses_[0-9a-f]{20}$/);
const role = z.enum(['requester', 'approver', 'auditor', 'admin']);
const seq = z.int().min(0);

// Shapes that several commands share have a name (`meta({ id })`): docs/cli.md renders them once,
// under "JSON shapes", and every command that uses one refers to it by that name.

const approvalView = z.strictObject({
  deadline: dateTime.describe('when a pending request times out'),
  requirements: z
    .array(z.strictObject({ scopes: z.array(z.string()), approvers: z.array(z.string()), count: z.int(), approvedBy: z.array(z.string()) }))
    .describe('one per approval rule its scopes fall under; all must be met'),
  deniedBy: z.strictObject({ approver: z.string(), reason: z.string().nullable() }).nullable(),
});

/** The grant object (docs/api.md#the-grant-object): never its credential. */
export const grantView = z
  .strictObject({
    id: grantId,
    subject: z.string(),
    scopes: z.array(z.string()),
    reason: z.string().nullable(),
    state: z.enum(GRANT_STATES),
    createdAt: dateTime,
    activatedAt: dateTime.nullable().describe('null while pending'),
    expiresAt: dateTime.nullable().describe('null while pending'),
    ttlSeconds: z.int(),
    heartbeatDeadline: dateTime.nullable().describe('null while no process holds it (jit request)'),
    heartbeatIntervalSeconds: z.int(),
    endedAt: dateTime.nullable(),
    endReason: z.string().nullable(),
    approval: approvalView.nullable().describe('null when its policy needed no approval'),
    deprovision: z.literal('pending').optional().describe("while an ended grant's database role is still to be dropped"),
  })
  .meta({ id: 'Grant' });

const wrapper = z.strictObject({ pid: z.int(), host: z.string(), bootId: z.string(), startTicks: z.int() });

/** A grant in this machine's index, as `jit grants` lists it. */
export const localGrant = z
  .strictObject({
    id: grantId,
    profile: z.string(),
    brokerUrl: z.string(),
    auth: z.enum(['env', 'profile', 'oidc']),
    scopes: z.array(z.string()),
    pid: z.int().nullable(),
    wrapper: wrapper.nullable(),
    command: z.string(),
    createdAt: dateTime,
    expiresAt: dateTime.nullable(),
    approvalDeadline: dateTime.nullable().optional(),
    state: z.enum(['pending', 'active', 'revoke-pending', 'suspended']),
    wrapperAlive: z.boolean(),
  })
  .meta({ id: 'LocalGrant' });

/** What revoking one grant did (docs/api.md#delete-v1grantsid); `unknown` is the CLI's own. */
export const revocationReceipt = z
  .strictObject({
    id: grantId,
    state: z.enum([...GRANT_STATES, 'unknown']),
    revokedAt: dateTime.nullable(),
    alreadyEnded: z.boolean(),
    actions: z.array(z.string()),
    deprovision: z.literal('pending').optional(),
  })
  .meta({ id: 'Receipt' });

/** One audit record (docs/audit.md#records). */
export const auditRecord = z
  .strictObject({
    seq: z.int().min(1),
    at: dateTime,
    action: z.string(),
    actor: z.string().nullable(),
    subject: z.string().nullable(),
    grant: z.string().nullable(),
    scope: z.string().nullable().describe('space-separated'),
    outcome: z.enum(['ok', 'pending', 'denied', 'error', 'alert']),
    details: z.record(z.string(), z.unknown()),
    hash: z.string(),
    checkpoint: z
      .strictObject({ at: dateTime, keyId: z.string(), signature: z.string() })
      .optional()
      .describe('on a record a checkpoint was signed at'),
  })
  .meta({ id: 'AuditRecord' });

/** An API token as lists show it: never the token itself. */
export const tokenView = z
  .strictObject({
    tokenId,
    subject: z.string(),
    roles: z.array(role),
    label: z.string().nullable(),
    createdBy: z.string().nullable(),
    createdAt: dateTime,
    revokedAt: dateTime.nullable(),
  })
  .meta({ id: 'Token' });

const verifyReport = z.strictObject({
  ok: z.boolean(),
  records: z.int(),
  checkpoint: z.strictObject({ position: z.int(), at: dateTime, keyId: z.string(), hash: z.string() }).nullable(),
  head: z.strictObject({ position: z.int(), hash: z.string() }).nullable(),
  problem: z
    .strictObject({
      kind: z.enum(['altered', 'missing', 'rewritten', 'truncated', 'bad-signature', 'untrusted-key', 'out-of-order']),
      position: z.int(),
      message: z.string(),
    })
    .nullable(),
  unsealed: z.int(),
  elapsedMs: z.number(),
});

const approvalRequirement = z.strictObject({ required: z.boolean(), approvers: z.array(z.string()), count: z.int() });

/** `jit policy explain`'s decision (docs/policy.md#the-explanation). */
const decision = z.strictObject({
  subject: z.string(),
  allowed: z.boolean(),
  ttlSeconds: z.int().nullable().describe('null when refused'),
  maxTtlSeconds: z.int().nullable().describe('null when refused'),
  approval: approvalRequirement,
  explanation: z.array(
    z.strictObject({
      scope: z.string(),
      allowed: z.boolean(),
      rule: z.string().nullable(),
      deniedBy: z.strictObject({ rule: z.string(), reason: z.string() }).nullable(),
      approval: approvalRequirement.nullable(),
      notMatched: z.array(z.strictObject({ rule: z.string(), kind: z.enum(['allow', 'deny']), why: z.string() })),
    }),
  ),
  refusal: z.strictObject({ code: z.enum(['policy_denied', 'ttl_too_long']), message: z.string(), hint: z.string() }).nullable(),
});

/** One line of `jit grants --watch --json` (docs/cli.md#--watch), for a listing whose items are `grant`. */
function grantChange<T extends z.ZodType>(grant: T) {
  return z.strictObject({
    at: dateTime,
    change: z.enum(['added', 'changed', 'removed']),
    id: grantId,
    state: z.string(),
    timeLeft: z.string().describe('as the TIME LEFT column: 42m, 1h5m, 30s or -'),
    grant,
  });
}

const shapes = {
  login: z.strictObject({ profile: z.string(), brokerUrl: z.string(), subject: z.string(), keychain: z.enum(['keytar', 'napi-keyring']) }),
  loginOidc: z.strictObject({
    brokerUrl: z.string(),
    source: z.enum(['JIT_OIDC_TOKEN', 'JIT_OIDC_TOKEN_FILE', 'github-actions']),
    subject: z.string(),
    issuer: z.string().describe("the issuer's name in broker.yaml"),
    roles: z.array(role),
    sessionId,
    expiresAt: dateTime,
    stored: z.literal(false),
  }),
  logout: z.strictObject({ profile: z.string(), removedToken: z.boolean(), removedProfile: z.boolean() }),
  whoami: z.strictObject({
    brokerUrl: z.string(),
    profile: z.string(),
    auth: z.enum(['env', 'profile', 'oidc']),
    subject: z.string(),
    roles: z.array(role),
    tokenId: z.union([tokenId, sessionId]).describe('a CI session id with auth oidc'),
    expiresAt: dateTime.optional().describe('auth oidc only: when the session ends'),
  }),
  env: z
    .object({ JIT_GRANT_ID: grantId, JIT_EXPIRES_AT: dateTime })
    .catchall(z.string())
    .superRefine((variables, check) => {
      for (const name of Object.keys(variables)) {
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) check.addIssue({ code: 'custom', message: `"${name}" is not a variable name` });
      }
    })
    .describe('every variable jit run would give the job, then JIT_GRANT_ID and JIT_EXPIRES_AT'),
  grants: z.strictObject({ grants: z.array(localGrant) }),
  grantsRemote: z.strictObject({ grants: z.array(grantView) }),
  grantsWatch: grantChange(localGrant),
  grantsWatchRemote: grantChange(grantView),
  receipts: z.strictObject({ revoked: z.array(revocationReceipt) }),
  auditPage: z.strictObject({
    records: z.array(auditRecord),
    next: seq.nullable().describe('pass as --after for the next page; null on the last'),
  }),
  verifyReport,
  verifyFileReport: verifyReport.extend({
    file: z.string(),
    from: z.int().describe('the first record verified: 1, or the signed checkpoint a mid-chain copy starts from'),
    to: z.int(),
    uncovered: z.int().describe('records of the copy before `from`, not verified'),
  }),
  doctor: z.strictObject({
    checks: z.array(
      z.strictObject({
        name: z.enum(['broker', 'clock', 'auth', 'keychain', 'config', 'grants']),
        status: z.enum(['pass', 'warn', 'fail']),
        detail: z.string(),
        fix: z.string().optional(),
      }),
    ),
    ok: z.boolean().describe('false when any check failed'),
  }),
  configList: z.strictObject({
    active: z.string(),
    profiles: z.array(z.strictObject({ name: z.string(), brokerUrl: z.string(), defaultTtl: z.string().nullable(), active: z.boolean() })),
  }),
  configSet: z.strictObject({ name: z.string(), brokerUrl: z.string(), defaultTtl: z.string() }),
  configUse: z.strictObject({ active: z.string(), brokerUrl: z.string() }),
  configPath: z.strictObject({ path: z.string() }),
  brokerInit: z.strictObject({ token: z.string().describe('shown this once'), config: z.string(), subject: z.string() }),
  brokerStart: z.strictObject({ url: z.string() }),
  checkConfig: z.strictObject({
    valid: z.literal(true),
    file: z.string(),
    resources: z.int(),
    rules: z.int(),
    denyRules: z.int(),
    groups: z.int(),
  }),
  tokenCreate: tokenView.extend({ token: z.string().describe('shown this once') }),
  tokenList: z.strictObject({ tokens: z.array(tokenView) }),
  tokenRevoke: z.strictObject({ tokenId, subject: z.string(), revokedAt: dateTime, alreadyRevoked: z.boolean() }),
  decision,
  completion: z.strictObject({ shell: z.enum(['bash', 'zsh', 'fish']), script: z.string() }),
};

export const jsonShapes = { ...shapes, grantView, localGrant, revocationReceipt, auditRecord, tokenView };

/** With `--json`, every failure a user can cause or meet (docs/exit-codes.md); never a bug's. */
export const errorDocument = z.strictObject({
  error: z.strictObject({
    code: z.string().describe('stable, for scripts: invalid_request, unauthenticated, approval_pending, ...'),
    message: z.string(),
    hint: z.string().optional().describe('what to do about it'),
    grantId: grantId.optional().describe('approval_pending: the grant that still waits'),
    exitCode: z.int(),
  }),
});

/** One way to call a command with JSON output, and the document it prints (`lines`: one per line, NDJSON). */
export type JsonOutput = { invocation: string; also?: string; schema: z.ZodType; lines?: true };

/**
 * Every command that prints data, keyed by its path, with the JSON it prints. `jit run` prints
 * nothing of its own but the error document; `jit broker openapi` prints the OpenAPI document
 * (docs/openapi.json), which has a schema of its own.
 */
export const JSON_OUTPUTS: Record<string, JsonOutput[]> = {
  login: [
    { invocation: 'jit login --json', schema: shapes.login },
    { invocation: 'jit login --oidc --json', schema: shapes.loginOidc },
  ],
  logout: [{ invocation: 'jit logout --json', schema: shapes.logout }],
  whoami: [{ invocation: 'jit whoami --json', schema: shapes.whoami }],
  request: [{ invocation: 'jit request --json', schema: grantView }],
  env: [{ invocation: 'jit env --json', also: 'jit env --format json', schema: shapes.env }],
  grants: [
    { invocation: 'jit grants --json', schema: shapes.grants },
    { invocation: 'jit grants --remote --json', schema: shapes.grantsRemote },
    { invocation: 'jit grants --watch --json', schema: shapes.grantsWatch, lines: true },
    { invocation: 'jit grants --watch --remote --json', schema: shapes.grantsWatchRemote, lines: true },
  ],
  renew: [{ invocation: 'jit renew ID --json', schema: grantView }],
  revoke: [
    { invocation: 'jit revoke ID --json', schema: revocationReceipt },
    { invocation: 'jit revoke --all --yes --json', schema: shapes.receipts },
  ],
  approvals: [{ invocation: 'jit approvals --json', schema: shapes.grantsRemote }],
  approve: [{ invocation: 'jit approve ID --json', schema: grantView }],
  deny: [{ invocation: 'jit deny ID --json', schema: grantView }],
  audit: [
    { invocation: 'jit audit --json', also: 'jit audit --format json', schema: shapes.auditPage },
    { invocation: 'jit audit --format jsonl', schema: auditRecord, lines: true },
  ],
  'audit verify': [
    { invocation: 'jit audit verify --json', schema: shapes.verifyReport },
    { invocation: 'jit audit verify --file EXPORT --json', schema: shapes.verifyFileReport },
  ],
  watch: [{ invocation: 'jit watch --json', schema: auditRecord, lines: true }],
  'broker init': [{ invocation: 'jit broker init --json', schema: shapes.brokerInit }],
  'broker start': [{ invocation: 'jit broker start --json', schema: shapes.brokerStart }],
  'broker check-config': [{ invocation: 'jit broker check-config --json', schema: shapes.checkConfig }],
  'broker token create': [{ invocation: 'jit broker token create --json', schema: shapes.tokenCreate }],
  'broker token list': [{ invocation: 'jit broker token list --json', schema: shapes.tokenList }],
  'broker token revoke': [{ invocation: 'jit broker token revoke ID --json', schema: shapes.tokenRevoke }],
  'policy explain': [{ invocation: 'jit policy explain --json', schema: shapes.decision }],
  completion: [{ invocation: 'jit completion SHELL --json', schema: shapes.completion }],
  doctor: [{ invocation: 'jit doctor --json', schema: shapes.doctor }],
  'config list': [{ invocation: 'jit config list --json', schema: shapes.configList }],
  'config set': [{ invocation: 'jit config set --json', schema: shapes.configSet }],
  'config use': [{ invocation: 'jit config use NAME --json', schema: shapes.configUse }],
  'config path': [{ invocation: 'jit config path --json', schema: shapes.configPath }],
};

/** The shapes with a name, rendered once in docs/cli.md: the grant, a local grant, a receipt, an audit record, a token. */
export const NAMED_SHAPES: z.ZodType[] = [grantView, localGrant, revocationReceipt, auditRecord, tokenView];

/** A schema as JSON Schema (draft 2020-12), named shapes as `$ref: '#/$defs/NAME'`, for the docs' rendering. */
export function toJsonSchema(schema: z.ZodType): Record<string, unknown> {
  return z.toJSONSchema(schema, { io: 'output', unrepresentable: 'any' }) as Record<string, unknown>;
}
