import { AuthError, ExitCode, JitError } from '../../core/errors.ts';
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
    if (!this.#verifier.configured) {
      await this.#rejected(now, 'unknown_issuer', 'this broker trusts no OIDC issuer (oidc.issuers in broker.yaml)', token);
    }
    let verified: Awaited<ReturnType<OidcVerifier['verify']>>;
    try {
      verified = await this.#verifier.verify(token, now);
    } catch (error) {
      if (error instanceof OidcRejection) return this.#rejected(now, error.reason, error.message, token, error.issuer?.name);
      throw error;
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

  async #rejected(now: number, reason: string, message: string, token: string, issuer?: string): Promise<never> {
    await this.#store.appendEvent({
      at: now,
      type: 'auth.oidc_rejected',
      subject: null,
      grantId: null,
      // The claims as the token states them, unverified (that is why it was refused): to find the job.
      detail: { issuer: issuer ?? null, reason, message, header: tokenHeader(token), claims: this.#deciding(unverifiedPart(token, 1)) },
    });
    if (reason === 'keys_unavailable') throw new OidcUnavailableError(`the CI identity token could not be checked: ${message}`);
    throw new OidcRejectedError(`the CI identity token was refused: ${message}`);
  }

  /** The deciding claims only, each cut short: never the whole token, never its signature. */
  #deciding(claims: Record<string, unknown>): Record<string, unknown> {
    const kept: Record<string, unknown> = {};
    for (const name of this.#recorded) {
      const value = claims[name];
      if (typeof value === 'string') kept[name] = value.slice(0, 200);
      else if (typeof value === 'number' || typeof value === 'boolean') kept[name] = value;
      else if (Array.isArray(value)) kept[name] = value.slice(0, 5).map((item) => String(item).slice(0, 200));
    }
    return kept;
  }
}

/** The header's algorithm and key id, which say how the token claims to be signed. */
function tokenHeader(token: string): { alg: string | null; kid: string | null } {
  const header = unverifiedPart(token, 0);
  const text = (value: unknown) => (typeof value === 'string' ? value.slice(0, 100) : null);
  return { alg: text(header.alg), kid: text(header.kid) };
}

/** Part `index` (0 header, 1 payload) of something shaped like a JWT, unverified; {} when it is not one. */
function unverifiedPart(token: string, index: number): Record<string, unknown> {
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[index] ?? '', 'base64url').toString('utf8')) as unknown;
    return payload && typeof payload === 'object' && !Array.isArray(payload) ? (payload as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}
