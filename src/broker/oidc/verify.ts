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
  constructor(reason: RejectionReason, message: string, issuer?: OidcIssuer) {
    super(message);
    this.reason = reason;
    this.issuer = issuer;
  }
}

export type VerifiedToken = { issuer: OidcIssuer; claims: JWTPayload; subject: string };

/** How long a fetched key set is trusted before it is fetched again, and the least time between two refetches. */
const KEYS_MAX_AGE_MS = 10 * 60_000;
const FETCH_TIMEOUT_MS = 5_000;
const MAX_TOKEN_LENGTH = 16 * 1024;

/**
 * Verifies CI identity tokens against the issuers broker.yaml trusts. Each issuer's key set is
 * inline, or fetched (from `jwksUri` or the issuer's discovery document) and cached: a token
 * whose `kid` the cache lacks refetches it once, no more often than `keyRefreshCooldown`, so
 * rotated keys are picked up and random kids cannot make the broker hammer the issuer.
 */
export class OidcVerifier {
  readonly #issuers: readonly OidcIssuer[];
  readonly #keys = new Map<string, JWTVerifyGetKey>();
  readonly #discovery = new Map<string, Promise<string>>();

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
      let remote: JWTVerifyGetKey | undefined;
      keys = async (header, token) => {
        remote ??= createRemoteJWKSet(new URL(issuer.jwksUri ?? (await this.#discoverJwksUri(issuer))), {
          cacheMaxAge: KEYS_MAX_AGE_MS,
          cooldownDuration: issuer.keyRefreshCooldownSeconds * 1000,
          timeoutDuration: FETCH_TIMEOUT_MS,
        });
        return remote(header, token);
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

async function fetchDiscovery(issuer: OidcIssuer): Promise<string> {
  const url = `${issuer.issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
  const response = await fetch(url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), headers: { accept: 'application/json' } });
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  const document = (await response.json()) as { issuer?: unknown; jwks_uri?: unknown };
  // The document must be the issuer's own (OpenID Connect Discovery 1.0, section 4.3).
  if (document.issuer !== issuer.issuer) throw new Error(`${url} names issuer ${String(document.issuer)}, not ${issuer.issuer}`);
  if (typeof document.jwks_uri !== 'string') throw new Error(`${url} has no jwks_uri`);
  const jwksUri = new URL(document.jwks_uri);
  const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(jwksUri.hostname);
  if (jwksUri.protocol !== 'https:' && !(loopback && jwksUri.protocol === 'http:')) throw new Error(`${url}: jwks_uri is not https`);
  return jwksUri.href;
}

/** jose's errors, as the reasons a CI job and an auditor read. */
function rejectionFor(error: unknown, issuer: OidcIssuer): OidcRejection {
  const reject = (reason: RejectionReason, message: string) => new OidcRejection(reason, message, issuer);
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
  if (error instanceof errors.JWKSTimeout || error instanceof errors.JWKSInvalid || error instanceof TypeError || isFetchFailure(error)) {
    return reject('keys_unavailable', `could not get issuer ${issuer.name}'s keys (${(error as Error).message})`);
  }
  if (error instanceof errors.JWSInvalid || error instanceof errors.JWTInvalid) return reject('malformed', (error as Error).message);
  if (error instanceof Error && !(error instanceof errors.JOSEError)) {
    return reject('keys_unavailable', `could not get issuer ${issuer.name}'s keys (${error.message})`);
  }
  return reject('malformed', (error as Error).message);
}

const isFetchFailure = (error: unknown) => error instanceof errors.JOSEError && error.code === 'ERR_JOSE_GENERIC';

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

/** The subject template with the token's claims in it: `ci:github:{repository}@{ref}` -> `ci:github:acme/x@refs/heads/main`. */
export function subjectFor(issuer: OidcIssuer, claims: JWTPayload): string {
  const missing: string[] = [];
  const unsafe: string[] = [];
  const subject = issuer.subject.replace(/\{([^}]+)\}/g, (_, claim: string) => {
    const text = claimText(claims[claim]);
    if (text === undefined) missing.push(claim);
    else if (!SUBJECT_VALUE.test(text)) unsafe.push(claim);
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
    throw new OidcRejection(
      'bad_subject',
      `claim ${unsafe.join(', ')} is empty or holds a character a subject may not (only letters, digits and . _ - / + = ~)`,
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
