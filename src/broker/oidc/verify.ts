import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  errors,
  type JWTPayload,
  type JWTVerifyGetKey,
  jwtVerify,
} from 'jose';
import { globMatches } from '../../core/scope.ts';
import type { OidcIssuer } from '../config.ts';

/** Why a CI identity token was refused: a stable code for scripts and the audit trail, and one line. */
export type RejectionReason =
  | 'malformed'
  | 'unknown_issuer'
  | 'wrong_audience'
  | 'expired'
  | 'not_yet_valid'
  | 'issued_in_future'
  | 'too_old'
  | 'algorithm_not_allowed'
  | 'unknown_key'
  | 'bad_signature'
  | 'claims_not_allowed'
  | 'bad_subject'
  | 'keys_unavailable';

export class OidcRejection extends Error {
  readonly reason: RejectionReason;
  /** The issuer the token named (it may not be one the broker trusts), when it could be read. */
  readonly issuer: OidcIssuer | undefined;
  /**
   * keys_unavailable only: this is the first token refused since the issuer's keys became
   * unreachable. Later ones in the same outage are answered alike but not recorded again.
   */
  readonly outageStarted: boolean;
  constructor(reason: RejectionReason, message: string, issuer?: OidcIssuer, outageStarted = false) {
    super(message);
    this.reason = reason;
    this.issuer = issuer;
    this.outageStarted = outageStarted;
  }
}

export type VerifiedToken = { issuer: OidcIssuer; claims: JWTPayload; subject: string };

/** How long a fetched key set is trusted before it is fetched again, and the least time between two refetches. */
const KEYS_MAX_AGE_MS = 10 * 60_000;
const FETCH_TIMEOUT_MS = 5_000;
const MAX_TOKEN_LENGTH = 16 * 1024;
/**
 * How long a failed fetch of an issuer's keys (or discovery document) is remembered: meanwhile
 * its tokens get the same 503 without a new fetch. jose's own cooldown starts only after a
 * successful fetch, so without this every exchange would ask an issuer that is down again.
 * keyRefreshCooldown, when it is shorter.
 */
const FAILED_FETCH_MEMORY_MS = 5_000;

/** The issuer's keys could not be had: network, timeout, an HTTP error, a bad JWKS or discovery document. */
class KeysUnavailable extends Error {
  readonly outageStarted: boolean;
  constructor(message: string, outageStarted: boolean) {
    super(message);
    this.outageStarted = outageStarted;
  }
}

/** Per issuer: since when its keys cannot be had (undefined: they can), and until when not to ask again. */
type KeyHealth = { failedUntil: number; message: string } | undefined;

/**
 * Verifies CI identity tokens against the issuers broker.yaml trusts. Each issuer's key set is
 * inline, or fetched (from `jwksUri` or the issuer's discovery document) and cached: a token
 * whose `kid` the cache lacks refetches it once, no more often than `keyRefreshCooldown`, so
 * rotated keys are picked up and random kids cannot make the broker hammer the issuer. A fetch
 * that fails is not retried for FAILED_FETCH_MEMORY_MS either.
 */
export class OidcVerifier {
  readonly #issuers: readonly OidcIssuer[];
  readonly #keys = new Map<string, JWTVerifyGetKey>();
  readonly #discovery = new Map<string, Promise<string>>();
  readonly #health = new Map<string, KeyHealth>();

  constructor(issuers: readonly OidcIssuer[]) {
    this.#issuers = issuers;
  }

  get configured(): boolean {
    return this.#issuers.length > 0;
  }

  /** The verified token, or an OidcRejection saying why not. `now` is the broker's clock (ms). */
  async verify(token: string, now: number): Promise<VerifiedToken> {
    if (token.length > MAX_TOKEN_LENGTH) throw new OidcRejection('malformed', `the token is longer than ${MAX_TOKEN_LENGTH} bytes`);
    let unverified: JWTPayload;
    try {
      decodeProtectedHeader(token);
      unverified = decodeJwt(token);
    } catch {
      throw new OidcRejection('malformed', 'the token is not a JWT (header.payload.signature)');
    }
    const issuer = this.#issuers.find((candidate) => candidate.issuer === unverified.iss);
    if (!issuer) {
      const named = typeof unverified.iss === 'string' ? `"${unverified.iss.slice(0, 100)}"` : 'no issuer';
      throw new OidcRejection('unknown_issuer', `the token names ${named}, which this broker does not trust (oidc.issuers)`);
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.#keySet(issuer), {
        issuer: issuer.issuer,
        audience: issuer.audiences,
        algorithms: issuer.algorithms,
        clockTolerance: issuer.clockSkewSeconds,
        maxTokenAge: issuer.maxTokenAgeSeconds,
        requiredClaims: ['exp', 'iat'],
        currentDate: new Date(now),
      }));
    } catch (error) {
      throw rejectionFor(error, issuer);
    }
    return { issuer, claims: payload, subject: identityFor(issuer, payload) };
  }

  #keySet(issuer: OidcIssuer): JWTVerifyGetKey {
    let keys = this.#keys.get(issuer.name);
    if (keys) return keys;
    if (issuer.jwks) {
      keys = createLocalJWKSet(issuer.jwks as Parameters<typeof createLocalJWKSet>[0]);
    } else {
      let remote: ReturnType<typeof createRemoteJWKSet> | undefined;
      const memoryMs = Math.min(FAILED_FETCH_MEMORY_MS, issuer.keyRefreshCooldownSeconds * 1000);
      keys = async (header, token) => {
        // Real time, not the broker's clock: this paces requests to the issuer.
        const health = this.#health.get(issuer.name);
        if (health && Date.now() < health.failedUntil) {
          // Keys still fresh from before the failed refetch (an unknown kid's) serve known kids.
          const cached = remote?.fresh ? remote.jwks() : undefined;
          if (cached) {
            try {
              return await createLocalJWKSet(cached)(header, token);
            } catch (error) {
              if (!(error instanceof errors.JWKSNoMatchingKey)) throw error;
            }
          }
          throw new KeysUnavailable(health.message, false);
        }
        try {
          remote ??= createRemoteJWKSet(new URL(issuer.jwksUri ?? (await this.#discoverJwksUri(issuer))), {
            cacheMaxAge: KEYS_MAX_AGE_MS,
            cooldownDuration: issuer.keyRefreshCooldownSeconds * 1000,
            timeoutDuration: FETCH_TIMEOUT_MS,
          });
          const key = await remote(header, token);
          // A fetch has just succeeded (not merely cached keys served): the outage, if any, is over.
          if (remote.coolingDown) this.#health.delete(issuer.name);
          return key;
        } catch (error) {
          const failure = fetchFailure(error);
          if (failure === undefined) throw error;
          const message = `could not get issuer ${issuer.name}'s keys (${failure})`;
          // Only the first failure of an outage is news; the record for it is written by the caller.
          // Asked now, not before the fetch: exchanges that failed together count one outage.
          const first = !this.#health.has(issuer.name);
          this.#health.set(issuer.name, { failedUntil: Date.now() + memoryMs, message });
          throw new KeysUnavailable(message, first);
        }
      };
    }
    this.#keys.set(issuer.name, keys);
    return keys;
  }

  /** The issuer's jwks_uri from its discovery document, fetched once (again after a failure). */
  #discoverJwksUri(issuer: OidcIssuer): Promise<string> {
    let found = this.#discovery.get(issuer.name);
    if (!found) {
      found = fetchDiscovery(issuer);
      found.catch(() => this.#discovery.delete(issuer.name));
      this.#discovery.set(issuer.name, found);
    }
    return found;
  }
}

/** A discovery document that could not be fetched or used. */
class DiscoveryFailed extends Error {}

async function fetchDiscovery(issuer: OidcIssuer): Promise<string> {
  const url = `${issuer.issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
  let document: { issuer?: unknown; jwks_uri?: unknown };
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), headers: { accept: 'application/json' } });
    if (!response.ok) throw new DiscoveryFailed(`${url} answered ${response.status}`);
    document = (await response.json()) as typeof document;
  } catch (error) {
    if (error instanceof DiscoveryFailed) throw error;
    throw new DiscoveryFailed(`${url}: ${networkReason(error)}`);
  }
  // The document must be the issuer's own (OpenID Connect Discovery 1.0, section 4.3).
  if (document?.issuer !== issuer.issuer)
    throw new DiscoveryFailed(`${url} names issuer ${String(document?.issuer)}, not ${issuer.issuer}`);
  if (typeof document.jwks_uri !== 'string') throw new DiscoveryFailed(`${url} has no jwks_uri`);
  let jwksUri: URL;
  try {
    jwksUri = new URL(document.jwks_uri);
  } catch {
    throw new DiscoveryFailed(`${url}: jwks_uri is not a URL`);
  }
  const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(jwksUri.hostname);
  if (jwksUri.protocol !== 'https:' && !(loopback && jwksUri.protocol === 'http:'))
    throw new DiscoveryFailed(`${url}: jwks_uri is not https`);
  return jwksUri.href;
}

/**
 * Why the issuer's keys could not be had, when `error` says they could not (and nothing else):
 * the discovery document, or jose's fetch of the key set (its timeout, an HTTP status other than
 * 200, a body that is not a key set, or fetch's own network failure).
 */
function fetchFailure(error: unknown): string | undefined {
  if (error instanceof DiscoveryFailed) return error.message;
  if (error instanceof errors.JWKSTimeout) return 'timed out';
  if (error instanceof errors.JWKSInvalid) return 'not a JSON Web Key Set';
  if (error instanceof errors.JOSEError && error.code === 'ERR_JOSE_GENERIC') return error.message;
  if (isNetworkFailure(error)) return networkReason(error);
  return undefined;
}

/** fetch() rejects a request that never got an answer with `TypeError: fetch failed` (its cause says why), or a timeout's DOMException. */
function isNetworkFailure(error: unknown): boolean {
  return (
    (error instanceof TypeError && error.message === 'fetch failed') ||
    (error instanceof DOMException && (error.name === 'TimeoutError' || error.name === 'AbortError'))
  );
}

function networkReason(error: unknown): string {
  if (error instanceof DOMException) return 'timed out';
  if (error instanceof SyntaxError) return 'not JSON';
  const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
  if (typeof cause?.code === 'string') return cause.code;
  return error instanceof Error ? error.message : String(error);
}

/** jose's errors, as the reasons a CI job and an auditor read. Anything else is not about the token: it is rethrown. */
function rejectionFor(error: unknown, issuer: OidcIssuer): OidcRejection {
  const reject = (reason: RejectionReason, message: string) => new OidcRejection(reason, message, issuer);
  if (error instanceof KeysUnavailable) return new OidcRejection('keys_unavailable', error.message, issuer, error.outageStarted);
  // Inline keys (broker.yaml's jwks) that jose cannot use: the config's fault, not the token's.
  if (error instanceof errors.JWKSInvalid)
    return reject('keys_unavailable', `issuer ${issuer.name}'s keys are not usable (${error.message})`);
  if (error instanceof errors.JWTExpired) {
    return error.claim === 'iat'
      ? reject('too_old', `the token was issued more than ${issuer.maxTokenAgeSeconds}s ago (oidc.issuers[].maxTokenAge)`)
      : reject('expired', `the token expired at ${isoClaim(error.payload.exp)}`);
  }
  if (error instanceof errors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case 'aud':
        return reject('wrong_audience', `the token's audience is not ${issuer.audiences.join(' or ')}`);
      case 'nbf':
        return reject('not_yet_valid', `the token is not valid before ${isoClaim(error.payload.nbf)}`);
      case 'iat':
        return reject('issued_in_future', `the token says it was issued in the future (${isoClaim(error.payload.iat)})`);
      default:
        return reject('malformed', `claim ${error.claim}: ${error.reason}`);
    }
  }
  if (error instanceof errors.JOSEAlgNotAllowed)
    return reject('algorithm_not_allowed', `algorithm not allowed (${issuer.algorithms.join(', ')} are)`);
  if (error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys) {
    return reject('unknown_key', `no key of issuer ${issuer.name} matches the token's key id, even after refreshing its keys`);
  }
  if (error instanceof errors.JWSSignatureVerificationFailed) return reject('bad_signature', 'the signature does not verify');
  if (error instanceof errors.JOSENotSupported)
    return reject('algorithm_not_allowed', 'the token uses an algorithm this broker does not accept');
  if (error instanceof errors.JOSEError) return reject('malformed', error.message);
  throw error;
}

function isoClaim(value: unknown): string {
  return typeof value === 'number' ? new Date(value * 1000).toISOString() : String(value);
}

function claimText(value: unknown): string | undefined {
  return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? String(value) : undefined;
}

function claimMatches(value: unknown, pattern: string): boolean {
  const text = claimText(value);
  return text !== undefined && globMatches(pattern, text);
}

/**
 * What a verified token's claims make of it at `issuer`: refused when they miss the issuer's claim
 * conditions (claims_not_allowed), else the subject its template gives (see subjectFor).
 */
export function identityFor(issuer: OidcIssuer, claims: JWTPayload): string {
  const failed = Object.entries(issuer.claims).filter(([claim, pattern]) => !claimMatches(claims[claim], pattern));
  if (failed.length > 0) {
    throw new OidcRejection(
      'claims_not_allowed',
      `claims ${failed.map(([claim]) => claim).join(', ')} do not match what issuer ${issuer.name} allows (oidc.issuers[].claims)`,
      issuer,
    );
  }
  return subjectFor(issuer, claims);
}

/**
 * What a claim value may hold to go into a subject: the characters of repository and project
 * paths, refs and ids. Not `@` or `:`, which separate a subject's parts, and not glob or template
 * syntax: a branch named `x@refs/heads/main` must not make a subject that a `ci:` glob written
 * for main matches.
 */
const SUBJECT_VALUE = /^[A-Za-z0-9._\-/+=~]+$/;

/**
 * The same, plus `:`, for the value of a template's only placeholder when it ends the template
 * (the default `ci:NAME:{sub}`): GitHub's and GitLab's `sub` are `:`-separated
 * (`repo:acme/x:ref:refs/heads/main`, `project_path:acme/x:ref_type:branch:ref:main`). With one
 * value after a fixed prefix, a `:` in it cannot shift text between two values, so two different
 * claim sets cannot make one subject; with two placeholders, `{a}:{b}` could (`x:y` + `z` and `x` + `y:z`).
 */
const SUBJECT_TAIL_VALUE = /^[A-Za-z0-9._\-/+=~:]+$/;

/** The subject template with the token's claims in it: `ci:github:{repository}@{ref}` -> `ci:github:acme/x@refs/heads/main`. */
export function subjectFor(issuer: OidcIssuer, claims: JWTPayload): string {
  const missing: string[] = [];
  const unsafe: string[] = [];
  const placeholders = [...issuer.subject.matchAll(/\{([^}]+)\}/g)];
  const allowed = placeholders.length === 1 && issuer.subject.endsWith('}') ? SUBJECT_TAIL_VALUE : SUBJECT_VALUE;
  const subject = issuer.subject.replace(/\{([^}]+)\}/g, (_, claim: string) => {
    const text = claimText(claims[claim]);
    if (text === undefined) missing.push(claim);
    else if (!allowed.test(text)) unsafe.push(claim);
    return text ?? '';
  });
  if (missing.length > 0) {
    throw new OidcRejection(
      'bad_subject',
      `the token lacks claim ${missing.join(', ')}, which the subject template of issuer ${issuer.name} needs`,
      issuer,
    );
  }
  if (unsafe.length > 0) {
    const characters = allowed === SUBJECT_TAIL_VALUE ? '. _ - / + = ~ :' : '. _ - / + = ~';
    throw new OidcRejection(
      'bad_subject',
      `claim ${unsafe.join(', ')} is empty or holds a character a subject may not (only letters, digits and ${characters})`,
      issuer,
    );
  }
  if (!/^ci:[\x21-\x7e]{1,250}$/.test(subject)) {
    throw new OidcRejection(
      'bad_subject',
      `the subject made from the token's claims is not printable text of at most 253 characters`,
      issuer,
    );
  }
  return subject;
}
