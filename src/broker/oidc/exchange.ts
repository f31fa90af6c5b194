import { AuthError, ExitCode, JitError, UsageError } from '../../core/errors.ts';
import { hashSecret, newId, newSecret } from '../../core/ids.ts';
import type { BrokerConfig } from '../config.ts';
import type { Clock } from '../grants/service.ts';
import type { BrokerStore, SessionRecord } from '../store/store.ts';
import { OidcRejection, OidcVerifier } from './verify.ts';

/** A session bearer: `jits_` and 256 random bits. API tokens are `jit_`, grant credentials `jitc_`. */
export const SESSION_PREFIX = 'jits';

/** What an exchange answers: the bearer is in this response only. */
export type OidcSession = {
  session: string;
  sessionId: string;
  subject: string;
  issuer: string;
  roles: ['requester'];
  expiresAt: string;
};

/**
 * Claims worth keeping in the audit trail for every exchange and rejection, besides the ones the
 * config matches on: what GitHub Actions and GitLab CI put in their tokens to say which job it is.
 */
const IDENTITY_CLAIMS = [
  'iss',
  'sub',
  'aud',
  'exp',
  'nbf',
  'iat',
  'jti',
  'repository',
  'repository_owner',
  'ref',
  'ref_type',
  'ref_protected',
  'environment',
  'workflow',
  'job_workflow_ref',
  'run_id',
  'run_attempt',
  'actor',
  'event_name',
  'project_path',
  'namespace_path',
  'pipeline_id',
  'job_id',
  'user_login',
];

/** The HTTP answer to a refused token: 401, so that the failed-authentication limit counts it. */
export class OidcRejectedError extends AuthError {
  constructor(message: string) {
    super(message, {
      code: 'oidc_rejected',
      hint: "check the job's audience (JIT_OIDC_AUDIENCE) and the broker's oidc.issuers; the broker's audit trail has the reason",
    });
  }
}

/**
 * The issuer's keys could not be fetched: the token was not judged at all. 503 (exit 6), like any
 * dependency of the broker that is down, and not counted as a failed authentication.
 */
export class OidcUnavailableError extends JitError {
  constructor(message: string) {
    super(message, ExitCode.brokerUnreachable, 503, 'oidc_unavailable', {
      hint: "the broker could not reach the CI issuer's keys; try again, or give them inline (oidc.issuers[].jwks)",
    });
  }
}

/**
 * broker.yaml trusts no issuer: nothing to judge, so nothing is audited (anyone may call the
 * route, and a record per call would let them fill the audit trail).
 */
export class OidcNotConfiguredError extends UsageError {
  constructor() {
    super('this broker does not exchange OIDC tokens: it trusts no OIDC issuer', {
      code: 'oidc_not_configured',
      hint: 'declare the CI issuer under oidc.issuers in broker.yaml (docs/broker-config.md#oidc), or give the job a JIT_TOKEN',
    });
  }
}

/** A rejection record's claims: each value cut to this many characters, the whole detail within REJECTION_DETAIL_BYTES. */
const REJECTED_VALUE_CHARS = 100;
const REJECTION_DETAIL_BYTES = 2048;

/**
 * Turns a CI system's OIDC identity token into a broker session (docs/ci.md#oidc), and records
 * each exchange (`auth.oidc_exchanged`) and each refusal (`auth.oidc_rejected`) with the claims
 * that decided it and the reason. The token itself is never stored, logged or echoed.
 */
export class OidcExchange {
  readonly #store: BrokerStore;
  readonly #clock: Clock;
  readonly #verifier: OidcVerifier;
  readonly #recorded: string[];

  constructor(options: { config: BrokerConfig; store: BrokerStore; clock: Clock }) {
    this.#store = options.store;
    this.#clock = options.clock;
    this.#verifier = new OidcVerifier(options.config.oidcIssuers);
    const { config } = options;
    // The claims the broker decides on: the issuers' own conditions, subject templates, policy rules.
    this.#recorded = [
      ...new Set([
        ...IDENTITY_CLAIMS,
        ...config.oidcIssuers.flatMap((issuer) => [
          ...Object.keys(issuer.claims),
          ...[...issuer.subject.matchAll(/\{([^}]+)\}/g)].map((match) => match[1] ?? ''),
        ]),
        ...[...config.rules, ...config.deny].flatMap((rule) => Object.keys(rule.claims)),
      ]),
    ];
  }

  async exchange(token: string): Promise<OidcSession> {
    const now = this.#clock.now();
    if (!this.#verifier.configured) throw new OidcNotConfiguredError();
    let verified: Awaited<ReturnType<OidcVerifier['verify']>>;
    try {
      verified = await this.#verifier.verify(token, now);
    } catch (error) {
      if (!(error instanceof OidcRejection)) throw error;
      if (error.reason === 'keys_unavailable') return this.#unavailable(now, error, token);
      return this.#rejected(now, error.reason, error.message, token, error.issuer?.name);
    }
    const { issuer, claims, subject } = verified;
    const session = newSecret(SESSION_PREFIX);
    const record: SessionRecord = {
      sessionId: newId('ses'),
      subject,
      tokenHash: hashSecret(session),
      issuer: issuer.name,
      claims: { ...claims },
      createdAt: now,
      expiresAt: now + issuer.sessionTtlSeconds * 1000,
    };
    // The record first: a session nobody can find in the audit trail never exists.
    await this.#store.appendEvent({
      at: now,
      type: 'auth.oidc_exchanged',
      subject,
      grantId: null,
      detail: {
        issuer: issuer.name,
        sessionId: record.sessionId,
        expiresAt: new Date(record.expiresAt).toISOString(),
        claims: this.#deciding(claims),
      },
    });
    await this.#store.addSession(record);
    return {
      session,
      sessionId: record.sessionId,
      subject,
      issuer: issuer.name,
      roles: ['requester'],
      expiresAt: new Date(record.expiresAt).toISOString(),
    };
  }

  /**
   * The issuer's keys cannot be had, so the token was not judged: 503, not counted as a failed
   * login. While the issuer is down every exchange ends here, so only the first of an outage is
   * recorded (as a refusal with reason keys_unavailable); the verifier answers the rest from its
   * memory of the failed fetch, without asking the issuer again.
   */
  async #unavailable(now: number, rejection: OidcRejection, token: string): Promise<never> {
    if (rejection.outageStarted) await this.#record(now, rejection.reason, rejection.message, token, rejection.issuer?.name);
    throw new OidcUnavailableError(`the CI identity token could not be checked: ${rejection.message}`);
  }

  async #rejected(now: number, reason: string, message: string, token: string, issuer?: string): Promise<never> {
    await this.#record(now, reason, message, token, issuer);
    throw new OidcRejectedError(`the CI identity token was refused: ${message}`);
  }

  /**
   * Records a refusal. Anyone can call the route, so the record is bounded: a token
   * that is not even shaped like a JWT leaves its length only, and one that is leaves its header's
   * `alg` and `kid` and the deciding claims as it states them (unverified: that is why it was
   * refused; they are there to find the job), each cut short, all within REJECTION_DETAIL_BYTES.
   */
  async #record(now: number, reason: string, message: string, token: string, issuer?: string): Promise<void> {
    const parts = jwtParts(token);
    const detail: Record<string, unknown> = { issuer: issuer ?? null, reason, message: printable(message, 300) };
    if (parts) {
      detail.header = { alg: shortText(parts.header.alg), kid: shortText(parts.header.kid) };
      detail.claims = {};
      let size = jsonBytes(detail);
      for (const [name, value] of Object.entries(this.#deciding(parts.payload, REJECTED_VALUE_CHARS))) {
        const entry = jsonBytes({ [name]: value });
        if (size + entry > REJECTION_DETAIL_BYTES) continue;
        (detail.claims as Record<string, unknown>)[name] = value;
        size += entry;
      }
    } else {
      detail.length = token.length;
    }
    await this.#store.appendEvent({ at: now, type: 'auth.oidc_rejected', subject: null, grantId: null, detail });
  }

  /** The deciding claims only, each cut to `chars`: never the whole token, never its signature. */
  #deciding(claims: Record<string, unknown>, chars = 200): Record<string, unknown> {
    const kept: Record<string, unknown> = {};
    for (const name of this.#recorded) {
      const value = claims[name];
      if (typeof value === 'string') kept[name] = value.slice(0, chars);
      else if (typeof value === 'number' || typeof value === 'boolean') kept[name] = value;
      else if (Array.isArray(value)) kept[name] = value.slice(0, 5).map((item) => String(item).slice(0, chars));
    }
    return kept;
  }
}

const shortText = (value: unknown) => (typeof value === 'string' ? printable(value, REJECTED_VALUE_CHARS) : null);
/** Cut short, and one byte a character in the record: what is not printable ASCII becomes `?`. */
const printable = (text: string, chars: number) => text.slice(0, chars).replace(/[^\x20-\x7e]/g, '?');
const jsonBytes = (value: unknown) => Buffer.byteLength(JSON.stringify(value));

/**
 * The unverified header and payload of something shaped like a JWT (three base64url parts, a
 * JSON object for a header); undefined when it is not one. A payload that is not an object is {}.
 */
function jwtParts(token: string): { header: Record<string, unknown>; payload: Record<string, unknown> } | undefined {
  if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$/.test(token)) return undefined;
  const [header = '', payload = ''] = token.split('.');
  const decoded = decodePart(header);
  return decoded ? { header: decoded, payload: decodePart(payload) ?? {} } : undefined;
}

function decodePart(part: string): Record<string, unknown> | undefined {
  try {
    const value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as unknown;
    return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
