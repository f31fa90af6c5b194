import { createHash, createPublicKey, type JsonWebKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import { parseDuration } from '../core/duration.ts';
import { UsageError } from '../core/errors.ts';
import { globMatches } from '../core/scope.ts';
import { canonicalUrl } from '../core/url.ts';
import { type AuditConfig, auditSchema, resolveAuditConfig } from './audit/config.ts';
import { FILES_ACTIONS } from './providers/files.ts';
import { resolveStoreConfig, type StoreConfig, storeSchema } from './store/config.ts';

/** broker.yaml, validated once at start-up (docs/broker-config.md). Durations are kept in seconds. */
export type FilesResource = { kind: 'files'; root: string };
/**
 * A PostgreSQL database whose tables grants reach through per-grant roles (docs/postgres.md). The
 * admin connection URL is a secret: it comes from the variable `urlEnv` names or the file `urlFile`
 * holds, never from broker.yaml itself. `tables` are the "schema.table" globs it may hand out.
 */
export type PostgresResource = {
  kind: 'postgres';
  urlEnv: string | undefined;
  urlFile: string | undefined;
  tables: string[];
  connectionLimit: number;
  /** Where jobs connect, when not where the broker does (the admin URL's host and port). */
  host: string | undefined;
  port: number | undefined;
};
/**
 * An upstream HTTP API the broker proxies (docs/http.md): the job gets `<envPrefix>_BASE_URL` and
 * `<envPrefix>_API_KEY` (its grant credential); the real upstream secret stays in the broker.
 */
export type HttpResource = {
  kind: 'http';
  upstream: string;
  secretEnv: string | undefined;
  secretFile: string | undefined;
  /** How the upstream secret is presented: `Authorization: Bearer` or a named header. */
  auth: { type: 'bearer' } | { type: 'header'; name: string };
  envPrefix: string;
  timeoutSeconds: number;
  maxRequestBytes: number;
};
export type Resource = FilesResource | PostgresResource | HttpResource;

/** The actions each kind of resource has. */
export const ACTIONS_BY_KIND: Record<Resource['kind'], readonly string[]> = {
  files: FILES_ACTIONS,
  postgres: ['select', 'insert', 'update', 'delete'],
  // http actions are "METHOD /path/pattern" (checked by shape, see HTTP_ACTION); none is fixed.
  http: [],
};

/** An http scope's action: a method and a path pattern (`*` within a segment, `**` across). */
export const HTTP_ACTION = /^(GET|HEAD|POST|PUT|PATCH|DELETE|\*) \/[A-Za-z0-9._~\-/{}*]*$/;

/** Whether `action` applies to a resource of `kind`. */
export function actionApplies(kind: Resource['kind'], action: string): boolean {
  return kind === 'http' ? HTTP_ACTION.test(action) : ACTIONS_BY_KIND[kind].includes(action);
}

/** Who must approve before a grant is issued (docs/policy.md#approval). */
export type Approval = { required: boolean; approvers: string[]; count: number };

/** An allow rule. `subjects` and `claims` may each be empty, never both. */
export type PolicyRule = {
  name: string;
  subjects: string[];
  claims: Record<string, string>;
  scopes: string[];
  actions: string[];
  defaultTtlSeconds: number;
  maxTtlSeconds: number;
  approval?: Approval;
  /** For API scopes: how many calls and response bytes a grant under this rule may use (docs/http.md#budgets). */
  budget?: Budget;
};

/** A per-grant budget; a grant that goes over it is suspended. */
export type Budget = { requests?: number; bytes?: number };

/** A deny rule: wins over any allow. Empty `actions` means every action. */
export type DenyRule = {
  name: string;
  subjects: string[];
  claims: Record<string, string>;
  scopes: string[];
  actions: string[];
  reason: string;
};

/**
 * A CI system whose OIDC identity tokens the broker exchanges for sessions (docs/broker-config.md#oidc).
 * Keys come from `jwks` (inline, for air-gapped brokers), else `jwksUri`, else the issuer's
 * discovery document.
 */
export type OidcIssuer = {
  /** Short name, in audit records and error messages. */
  name: string;
  /** The `iss` a token must carry, exactly. */
  issuer: string;
  /** Accepted `aud` values: the token's audience must include one. */
  audiences: string[];
  jwksUri: string | undefined;
  jwks: { keys: Record<string, unknown>[] } | undefined;
  /** Asymmetric algorithms only: never `none`, never an HMAC one (no HS/RS confusion). */
  algorithms: string[];
  clockSkewSeconds: number;
  /** Tokens issued longer ago than this are refused, even before their `exp`. */
  maxTokenAgeSeconds: number;
  /** How long a session from one exchange lasts: the longest a CI job can hold grants through it. */
  sessionTtlSeconds: number;
  /** A token with a key id the cached keys lack refetches them, at most this often. */
  keyRefreshCooldownSeconds: number;
  /** `ci:...` with `{claim}` placeholders, e.g. `ci:github:{repository}@{ref}`; by default `ci:NAME:{sub}`. */
  subject: string;
  /** Globs every token of this issuer must match to be exchanged at all (e.g. repository_owner). */
  claims: Record<string, string>;
};

/** Signature algorithms an OIDC issuer may use: asymmetric only. */
export const OIDC_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;

export type BrokerConfig = {
  /** Absolute directory of the config file; relative paths in it resolve from here. */
  dir: string;
  /** SHA-256 of the file's text: the `config.loaded` audit record names the configuration by it. */
  sha256: string;
  publicUrl: string | undefined;
  /**
   * Load balancers whose X-Forwarded-For the broker believes, so the client address (failed-auth
   * limit, audit) is the caller's, not the balancer's. Empty: the socket's peer address.
   */
  trustedProxies: string[];
  heartbeatTimeoutSeconds: number;
  sweepIntervalSeconds: number;
  /** How long a request that needs approval stays pending before it times out. */
  approvalTimeoutSeconds: number;
  /** Where grants and events live (docs/broker-config.md#store). */
  store: StoreConfig;
  /** The audit trail's signing key, checkpoints, alerts and export sinks (docs/audit.md#configuration). */
  audit: AuditConfig;
  resources: Record<string, Resource>;
  rules: PolicyRule[];
  deny: DenyRule[];
  /** policy.groups: group name -> member subjects. */
  groups: Record<string, string[]>;
  /** oidc.issuers: the CI systems whose identity tokens are exchanged for sessions. */
  oidcIssuers: OidcIssuer[];
};

const duration = z
  .string({ error: (issue) => (issue.input === undefined ? 'required' : 'a duration needs a unit: 90s, 30m, 2h, 1d') })
  .transform((text, context) => {
    try {
      return parseDuration(text);
    } catch (error) {
      context.addIssue({ code: 'custom', message: (error as Error).message });
      return z.NEVER;
    }
  });

const PATTERN = /^[a-z][a-z0-9_-]{0,62}(\/[A-Za-z0-9._=@+*-]+)*$/;

const scopePatterns = z
  .array(
    z
      .string()
      .regex(PATTERN, 'a scope pattern is RESOURCE[/PATH], where path segments may use * and **')
      .refine(
        (pattern) => !pattern.split('/').some((segment) => segment === '.' || segment === '..'),
        'path segments "." and ".." are not allowed',
      ),
  )
  .min(1);

const subjectList = z.array(
  z.string().regex(/^((user|group):.+|ci:[\x21-\x7e]+)$/, 'a subject is user:NAME, group:NAME or a CI identity ci:... (globs: *, **)'),
);

const claimMatches = z.record(z.string().min(1), z.string().min(1, 'a claim pattern is a non-empty string (globs: *, **)')).default({});

const GROUP_NAME = /^[A-Za-z0-9._@-]{1,64}$/;

/** https, or http on a loopback host (a test issuer on this machine). Kept as written: `iss` is compared exactly. */
const oidcUrl = z.url().refine((text) => {
  const url = new URL(text);
  return url.protocol === 'https:' || (url.protocol === 'http:' && ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname));
}, 'an OIDC issuer or JWKS URL is https:// (http:// only on a loopback host)');

const SUBJECT_TEMPLATE = /^ci:([\x21-\x7a|~]|\{[A-Za-z_][A-Za-z0-9_.-]*\})+$/;

/**
 * An inline key must be a public key Node can import (the same check jose relies on), so a
 * malformed or private key is a config error at start-up, not a failed exchange later.
 */
function checkPublicJwk(key: Record<string, unknown>, context: z.RefinementCtx): void {
  if (typeof key.kty !== 'string') {
    context.addIssue({ code: 'custom', message: 'a JWK needs kty' });
    return;
  }
  if ('d' in key) {
    context.addIssue({
      code: 'custom',
      message: 'this JWK is a private key: give only its public part (drop "d" and the other private members)',
    });
    return;
  }
  try {
    createPublicKey({ key: key as JsonWebKey, format: 'jwk' });
  } catch (error) {
    context.addIssue({ code: 'custom', message: `not a usable public key: ${(error as Error).message}` });
  }
}

/**
 * Issuers that sign identity tokens for anybody's jobs, with the claims that say whose job it is.
 * Trusted with no condition on one of them, such an issuer would let every repository in the world
 * open a session (and write an audit record) at this broker, whatever the policy then allows.
 */
const SHARED_ISSUERS: Record<string, { who: string; claims: string[]; example: string }> = {
  'https://token.actions.githubusercontent.com': {
    who: 'every GitHub repository',
    claims: ['repository_owner', 'repository_owner_id', 'repository', 'repository_id', 'enterprise', 'enterprise_id'],
    example: 'claims: { repository_owner: acme }',
  },
  'https://gitlab.com': {
    who: 'every GitLab.com project',
    claims: ['namespace_path', 'namespace_id', 'project_path', 'project_id'],
    example: 'claims: { namespace_path: acme }',
  },
};

/** Why a shared issuer's `claims` do not keep it to one owner (undefined when they do, or it is not shared). */
function unrestrictedSharedIssuer(issuer: string, claims: Record<string, string>): string | undefined {
  const shared = SHARED_ISSUERS[issuer];
  if (!shared) return undefined;
  // A pattern that starts with `*` still matches everybody's (or anybody's look-alike) owner.
  if (shared.claims.some((claim) => claims[claim] !== undefined && !claims[claim]?.startsWith('*'))) return undefined;
  return `${issuer} signs tokens for ${shared.who}: keep this issuer to yours with a condition on ${shared.claims.join(', ')} (e.g. ${shared.example})`;
}

const oidcIssuerSchema = z.strictObject({
  name: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, 'an issuer name is lowercase letters, digits or "-", e.g. github'),
  issuer: oidcUrl,
  audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
  jwksUri: oidcUrl.optional(),
  jwks: z
    .strictObject({
      keys: z.array(z.record(z.string(), z.unknown()).superRefine(checkPublicJwk)).min(1),
    })
    .optional(),
  algorithms: z
    .array(z.enum(OIDC_ALGORITHMS, { error: `allowed algorithms are ${OIDC_ALGORITHMS.join(', ')} (never none or HS*)` }))
    .min(1)
    .default(['RS256']),
  clockSkew: duration.default(60),
  maxTokenAge: duration.default(3600),
  keyRefreshCooldown: duration.default(30),
  sessionTtl: duration
    .default(3600)
    .refine((seconds) => seconds <= 86_400, 'a session lasts at most 1d (a CI job that runs longer exchanges again)'),
  subject: z
    .string()
    .regex(SUBJECT_TEMPLATE, 'a subject template is ci:TEXT with {claim} placeholders, e.g. ci:github:{repository}@{ref}')
    .optional(),
  claims: claimMatches,
});

const schema = z
  .strictObject({
    version: z.literal(1),
    publicUrl: z.url().transform(canonicalUrl).optional(),
    trustedProxies: z
      .array(
        z
          .string()
          .regex(/^[0-9A-Fa-f.:]+(\/\d{1,3})?$/, 'a trusted proxy is an IP address or CIDR range, e.g. 10.0.0.0/8')
          .refine((text) => isIP(text.split('/')[0] ?? '') !== 0, 'a trusted proxy is an IP address or CIDR range, e.g. 10.0.0.0/8'),
      )
      .default([]),
    grants: z
      .strictObject({
        heartbeatTimeout: duration.default(30),
        sweepInterval: duration.default(1),
        approvalTimeout: duration.default(3600),
      })
      .default({ heartbeatTimeout: 30, sweepInterval: 1, approvalTimeout: 3600 }),
    store: storeSchema,
    audit: auditSchema,
    oidc: z
      .strictObject({ issuers: z.array(oidcIssuerSchema).default([]) })
      .default({ issuers: [] })
      .superRefine((oidc, context) => {
        const seen = new Set<string>();
        oidc.issuers.forEach((issuer, index) => {
          for (const [key, value] of [
            ['name', issuer.name],
            ['issuer', issuer.issuer],
          ] as const) {
            if (seen.has(`${key}:${value}`))
              context.addIssue({ code: 'custom', path: ['issuers', index, key], message: `duplicate ${key} "${value}"` });
            seen.add(`${key}:${value}`);
          }
          if (issuer.jwks && issuer.jwksUri)
            context.addIssue({ code: 'custom', path: ['issuers', index, 'jwks'], message: 'give jwks (inline keys) or jwksUri, not both' });
          const unrestricted = unrestrictedSharedIssuer(issuer.issuer, issuer.claims);
          if (unrestricted) context.addIssue({ code: 'custom', path: ['issuers', index, 'claims'], message: unrestricted });
        });
      }),
    resources: z.record(
      z.string().regex(/^[a-z][a-z0-9_-]{0,62}$/, 'a resource name is lowercase letters, digits, "-" or "_"'),
      z.discriminatedUnion('kind', [
        z.strictObject({ kind: z.literal('files'), root: z.string().min(1) }),
        z
          .strictObject({
            kind: z.literal('postgres'),
            urlEnv: z
              .string()
              .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'urlEnv is the name of an environment variable, such as JIT_WAREHOUSE_ADMIN_URL')
              .optional(),
            urlFile: z.string().min(1).optional(),
            tables: z
              .array(
                z
                  .string()
                  .regex(
                    /^[A-Za-z_*][A-Za-z0-9_*]*\.[A-Za-z_*][A-Za-z0-9_*]*$/,
                    'a table is "schema.table"; "*" matches within a name, e.g. public.*',
                  ),
              )
              .min(1, 'list the tables it may hand out, e.g. ["public.*"]'),
            connectionLimit: z.number().int().min(1).max(1000).default(5),
            host: z.string().min(1).optional(),
            port: z.number().int().min(1).max(65535).optional(),
          })
          .refine((resource) => (resource.urlEnv === undefined) !== (resource.urlFile === undefined), {
            message: 'a postgres resource needs exactly one of urlEnv and urlFile (the admin URL is a secret, never in broker.yaml)',
            path: ['urlEnv'],
          }),
        z
          .strictObject({
            kind: z.literal('http'),
            upstream: z.url().transform(canonicalUrl),
            secretEnv: z
              .string()
              .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'secretEnv is the name of an environment variable, such as JIT_OPENAI_KEY')
              .optional(),
            secretFile: z.string().min(1).optional(),
            header: z
              .string()
              .regex(/^[A-Za-z0-9-]+$/, 'header is a header name, such as x-api-key')
              .optional(),
            envPrefix: z
              .string()
              .regex(/^[A-Z][A-Z0-9_]*$/, 'envPrefix is upper case, such as OPENAI (giving OPENAI_BASE_URL and OPENAI_API_KEY)'),
            timeout: duration.default(60),
            maxRequestBytes: z
              .number()
              .int()
              .min(1)
              .default(10 * 1024 * 1024),
          })
          .refine((resource) => (resource.secretEnv === undefined) !== (resource.secretFile === undefined), {
            message: 'an http resource needs exactly one of secretEnv and secretFile (the upstream secret never sits in broker.yaml)',
            path: ['secretEnv'],
          }),
      ]),
    ),
    policy: z.strictObject({
      groups: z
        .record(
          z.string().regex(GROUP_NAME, 'a group name is 1-64 letters, digits, ".", "_", "@" or "-"'),
          z.array(z.string().regex(/^user:.+$/, 'a group member is user:NAME (groups do not nest)')),
        )
        .default({}),
      rules: z.array(
        z.strictObject({
          name: z.string().min(1),
          subjects: subjectList.default([]),
          claims: claimMatches,
          scopes: scopePatterns,
          actions: z.array(z.string().min(1)).default(['read']),
          defaultTtl: duration.default(3600),
          maxTtl: duration,
          approval: z
            .strictObject({
              required: z.boolean().default(true),
              approvers: subjectList.default([]),
              count: z.number().int().min(1).default(1),
            })
            .optional(),
          budget: z
            .strictObject({
              requests: z.number().int().min(1).optional(),
              bytes: z.number().int().min(1).optional(),
            })
            .optional(),
        }),
      ),
      deny: z
        .array(
          z.strictObject({
            name: z.string().min(1),
            subjects: subjectList.default([]),
            claims: claimMatches,
            scopes: scopePatterns,
            actions: z.array(z.string().min(1)).default([]),
            reason: z.string().min(1),
          }),
        )
        .default([]),
    }),
  })
  .superRefine((config, context) => {
    const known = Object.keys(config.resources);
    const groups = config.policy.groups;
    const issue = (path: (string | number)[], message: string) => context.addIssue({ code: 'custom', path: ['policy', ...path], message });
    const checkSubjects = (subjects: string[], at: (string | number)[]) =>
      subjects.forEach((subject, index) => {
        const group = subject.startsWith('group:') ? subject.slice('group:'.length) : undefined;
        if (group !== undefined && !(group in groups)) {
          const declared = Object.keys(groups);
          issue(
            [...at, index],
            `unknown group "${group}" (declare it under policy.groups${declared.length ? `; known: ${declared.join(', ')}` : ''})`,
          );
        }
      });
    const checkRule = (
      rule: { subjects: string[]; claims: Record<string, string>; scopes: string[]; actions: string[] },
      at: (string | number)[],
    ) => {
      if (at[0] === 'rules' && rule.subjects.length === 0 && Object.keys(rule.claims).length === 0) {
        issue([...at, 'subjects'], 'an allow rule needs subjects, claims, or both (a deny rule without them refuses everyone)');
      }
      checkSubjects(rule.subjects, [...at, 'subjects']);
      rule.scopes.forEach((pattern, patternIndex) => {
        const resource = pattern.split('/')[0] ?? '';
        if (!known.includes(resource)) {
          issue(
            [...at, 'scopes', patternIndex],
            `unknown resource "${resource}" (declare it under resources, or use one of: ${known.join(', ')})`,
          );
        }
      });
      // An action must apply to the kind of some resource the rule's scopes name.
      const kinds = [
        ...new Set(rule.scopes.map((pattern) => config.resources[pattern.split('/')[0] ?? '']?.kind).filter((kind) => kind !== undefined)),
      ];
      const allowed = [...new Set(kinds.flatMap((kind) => (kind === 'http' ? ['METHOD /path'] : ACTIONS_BY_KIND[kind])))];
      const unknownAction =
        kinds.length === 0 ? undefined : rule.actions.find((action) => !kinds.some((kind) => actionApplies(kind, action)));
      if (unknownAction !== undefined) {
        issue(
          [...at, 'actions'],
          `action "${unknownAction}" does not apply to ${kinds.join(' or ')} resources (they have: ${allowed.join(', ')})`,
        );
      }
    };
    const seen = new Map<string, string>();
    const checkName = (name: string, at: (string | number)[]) => {
      const first = seen.get(name);
      if (first !== undefined)
        issue([...at, 'name'], `duplicate rule name "${name}" (also ${first}); each decision names its rule, so names are unique`);
      else seen.set(name, `policy.${at.join('.')}`);
    };
    config.policy.rules.forEach((rule, ruleIndex) => {
      checkName(rule.name, ['rules', ruleIndex]);
      checkRule(rule, ['rules', ruleIndex]);
      if (rule.approval) checkSubjects(rule.approval.approvers, ['rules', ruleIndex, 'approval', 'approvers']);
      if (rule.approval?.required)
        checkApproval(rule, groups, (path, message) => issue(['rules', ruleIndex, 'approval', ...path], message));
    });
    config.policy.deny.forEach((rule, ruleIndex) => {
      checkName(rule.name, ['deny', ruleIndex]);
      checkRule(rule, ['deny', ruleIndex]);
    });
    config.policy.rules.forEach((rule, ruleIndex) => {
      checkClaimsIssuer(rule.claims, config.oidc.issuers, (path, message) => issue(['rules', ruleIndex, 'claims', ...path], message));
    });
  });

/**
 * With several OIDC issuers, an allow rule that matches claims names the one issuer it is for
 * (`claims.iss`): claims are whatever each CI system puts in its tokens, so a rule written for
 * GitHub's `repository` would otherwise let any other trusted issuer's token that states the same
 * claim in. A deny rule needs no issuer: matching more only refuses more.
 */
function checkClaimsIssuer(
  claims: Record<string, string>,
  issuers: readonly { name: string; issuer: string }[],
  issue: (path: string[], message: string) => void,
): void {
  if (issuers.length < 2 || Object.keys(claims).length === 0) return;
  const urls = issuers.map((issuer) => `${issuer.issuer} (${issuer.name})`).join(', ');
  if (claims.iss === undefined) {
    issue(
      [],
      `broker.yaml trusts ${issuers.length} OIDC issuers, so a rule that matches claims names its issuer: add iss: "${issuers[0]?.issuer}" (or the URL of the issuer it is for) to its claims; trusted: ${urls}`,
    );
    return;
  }
  const pattern = claims.iss;
  const matched = issuers.filter((issuer) => globMatches(pattern, issuer.issuer));
  if (matched.length !== 1) {
    issue(
      ['iss'],
      `"${pattern}" matches ${matched.length === 0 ? 'none' : matched.length} of the trusted OIDC issuers; a rule is for one: give its URL, one of ${urls}`,
    );
  }
}

/**
 * An approval rule must be satisfiable: at least `count` distinct approvers besides the requester
 * (no self-approval). Requesters named by subjects are known; a claims-only rule's requester is a
 * CI identity, never an approver.
 */
function checkApproval(
  rule: { subjects: string[]; approval?: { approvers: string[]; count: number } },
  groups: Record<string, string[]>,
  issue: (path: (string | number)[], message: string) => void,
): void {
  const approval = rule.approval;
  if (!approval) return;
  if (approval.approvers.length === 0) {
    issue(['approvers'], 'an approval rule needs approvers (user:NAME or group:NAME)');
    return;
  }
  const ci = approval.approvers.findIndex((approver) => approver.startsWith('ci:'));
  if (ci !== -1) {
    issue(['approvers', ci], 'an approver is user:NAME or group:NAME (a CI identity has the requester role only)');
    return;
  }
  const expand = (subjects: string[]) =>
    new Set(subjects.flatMap((subject) => (subject.startsWith('group:') ? (groups[subject.slice('group:'.length)] ?? []) : [subject])));
  const approvers = expand(approval.approvers);
  const requesters = [...expand(rule.subjects)];
  const fewest = Math.min(approvers.size, ...requesters.map((requester) => approvers.size - (approvers.has(requester) ? 1 : 0)));
  if (approval.count > fewest) {
    const whose = fewest < approvers.size ? ' besides the requester (no self-approval)' : '';
    issue(['count'], `count ${approval.count} is more than the ${fewest} distinct approver(s) who could approve${whose}`);
  }
}

export async function loadBrokerConfig(file: string): Promise<BrokerConfig> {
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot read broker config ${file}: ${error.code ?? error.message}`, {
      hint: 'create one with `jit broker init --dir DIR`',
      code: 'config_missing',
    });
  });
  return parseBrokerConfig(text, file);
}

export function parseBrokerConfig(text: string, file: string): BrokerConfig {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: false });
  const [syntaxError] = document.errors;
  if (syntaxError) {
    const line = lineCounter.linePos(syntaxError.pos[0]).line;
    throw new UsageError(`${file}:${line}: ${syntaxError.message.split('\n')[0]}`, { code: 'invalid_config', hint: 'fix the YAML syntax' });
  }
  const parsed = schema.safeParse(document.toJS());
  if (!parsed.success) {
    const [issue] = parsed.error.issues;
    const keyPath = issue?.path.map(String) ?? [];
    const node = document.getIn(keyPath, true) as { range?: [number, number, number] } | undefined;
    const parent = document.getIn(keyPath.slice(0, -1), true) as { range?: [number, number, number] } | undefined;
    const offset = node?.range?.[0] ?? parent?.range?.[0];
    const line = offset === undefined ? '?' : lineCounter.linePos(offset).line;
    throw new UsageError(`${file}:${line}: ${keyPath.join('.') || '(top level)'}: ${issue?.message ?? 'invalid'}`, {
      code: 'invalid_config',
      hint: 'see docs/broker-config.md for the format',
    });
  }
  const config = parsed.data;
  const dir = path.dirname(path.resolve(file));
  const rules: PolicyRule[] = config.policy.rules.map((rule) => ({
    name: rule.name,
    subjects: rule.subjects,
    claims: rule.claims,
    scopes: rule.scopes,
    actions: rule.actions,
    defaultTtlSeconds: Math.min(rule.defaultTtl, rule.maxTtl),
    maxTtlSeconds: rule.maxTtl,
    ...(rule.approval?.required ? { approval: { required: true, approvers: rule.approval.approvers, count: rule.approval.count } } : {}),
    ...(rule.budget ? { budget: rule.budget } : {}),
  }));
  return {
    dir,
    sha256: createHash('sha256').update(text).digest('hex'),
    publicUrl: config.publicUrl,
    trustedProxies: config.trustedProxies,
    heartbeatTimeoutSeconds: config.grants.heartbeatTimeout,
    sweepIntervalSeconds: config.grants.sweepInterval,
    approvalTimeoutSeconds: config.grants.approvalTimeout,
    store: resolveStoreConfig(config.store, dir),
    audit: resolveAuditConfig(config.audit, dir),
    resources: Object.fromEntries(
      Object.entries(config.resources).map(([name, resource]): [string, Resource] => [
        name,
        resource.kind === 'files'
          ? { kind: 'files', root: path.resolve(dir, resource.root) }
          : resource.kind === 'http'
            ? {
                kind: 'http',
                upstream: resource.upstream,
                secretEnv: resource.secretEnv,
                secretFile: resource.secretFile === undefined ? undefined : path.resolve(dir, resource.secretFile),
                auth: resource.header ? { type: 'header', name: resource.header.toLowerCase() } : { type: 'bearer' },
                envPrefix: resource.envPrefix,
                timeoutSeconds: resource.timeout,
                maxRequestBytes: resource.maxRequestBytes,
              }
            : {
                kind: 'postgres',
                urlEnv: resource.urlEnv,
                urlFile: resource.urlFile === undefined ? undefined : path.resolve(dir, resource.urlFile),
                tables: resource.tables,
                connectionLimit: resource.connectionLimit,
                host: resource.host,
                port: resource.port,
              },
      ]),
    ),
    rules,
    deny: config.policy.deny,
    groups: config.policy.groups,
    oidcIssuers: config.oidc.issuers.map((issuer) => ({
      name: issuer.name,
      issuer: issuer.issuer,
      audiences: [issuer.audience].flat(),
      jwksUri: issuer.jwksUri,
      jwks: issuer.jwks,
      algorithms: issuer.algorithms,
      clockSkewSeconds: issuer.clockSkew,
      maxTokenAgeSeconds: issuer.maxTokenAge,
      sessionTtlSeconds: issuer.sessionTtl,
      keyRefreshCooldownSeconds: issuer.keyRefreshCooldown,
      // The default names the issuer by its name, not its URL: an `iss` is a URL, full of `:`.
      subject: issuer.subject ?? `ci:${issuer.name}:{sub}`,
      claims: issuer.claims,
    })),
  };
}

/** The documented starting config `jit broker init` writes. */
export function initialConfigYaml(adminSubject: string, options: { postgresUrlEnv?: string } = {}): string {
  const store = options.postgresUrlEnv
    ? `
# Where grants, principals and events live: PostgreSQL, its URL read from this variable.
store:
  engine: postgres
  urlEnv: ${options.postgresUrlEnv}
`
    : '';
  return `# jit broker configuration. Reference: docs/broker-config.md
version: 1
${store}
grants:
  # A grant whose holder stops sending heartbeats (its \`jit run\` was killed) lapses after this.
  heartbeatTimeout: 30s
  # How often the broker marks lapsed and expired grants as expired.
  sweepInterval: 1s
  # How long a request that needs approval waits for its approvers before it times out.
  approvalTimeout: 1h

# What can be granted. Paths are relative to this file's directory.
resources:
  datasets:
    kind: files
    root: data/datasets

# Who may request what, and for how long. Anything no rule allows is denied.
policy:
  rules:
    - name: admin-datasets
      subjects: [${JSON.stringify(adminSubject)}]
      scopes: ["datasets/**"]
      actions: [read]
      defaultTtl: 1h
      maxTtl: 8h
    # An allow rule whose grants wait for two data owners (never the requester). To try it,
    # uncomment it and the groups below; docs/policy.md explains every key.
    # - name: ml-team-eval
    #   subjects: ["group:ml-team"]
    #   scopes: ["datasets/eval/**"]
    #   maxTtl: 2h
    #   approval: { required: true, approvers: ["group:data-owners"], count: 2 }

  # Named groups of subjects, for rules, deny rules and approvers.
  # groups:
  #   ml-team: ["user:ana", "user:bo"]
  #   data-owners: ["user:olga", "user:pat"]

  # Deny rules win over any allow rule.
  # deny:
  #   - name: no-pii
  #     subjects: ["group:ml-team"]
  #     scopes: ["datasets/pii/**"]
  #     reason: PII needs a signed data processing agreement
`;
}
