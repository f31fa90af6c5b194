import type { Caller } from '../../core/caller.ts';
import { AuthError, NotFoundError, UsageError } from '../../core/errors.ts';
import { hashSecret, newId, newSecret } from '../../core/ids.ts';
import { checkTokenSubject } from '../../core/subject.ts';
import { type CreatedToken, checkRoles, type TokenRequest, type TokenRevocation, type TokenView } from '../../core/token.ts';
import type { Clock } from '../grants/service.ts';
import { SESSION_PREFIX } from '../oidc/exchange.ts';
import type { BrokerStore, PrincipalRecord } from '../store/store.ts';

/** The creator recorded for tokens minted on the broker host itself (`jit broker init`, `--dir`). */
export const BROKER_HOST = 'local:broker-host';

const iso = (ms: number) => new Date(ms).toISOString();
const LABEL = /^[^\p{Cc}]{1,100}$/u;

export function tokenView(principal: PrincipalRecord): TokenView {
  return {
    tokenId: principal.tokenId,
    subject: principal.subject,
    roles: principal.roles,
    label: principal.label,
    createdBy: principal.createdBy,
    createdAt: iso(principal.createdAt),
    revokedAt: principal.revokedAt === null ? null : iso(principal.revokedAt),
  };
}

/**
 * Principals and their API tokens: authenticate a call, mint, list and revoke tokens. A token is
 * shown once when minted and kept only as its hash; the store is the only truth, so a token
 * revoked through one replica stops authenticating on every replica at its next call.
 */
export class PrincipalService {
  readonly #store: BrokerStore;
  readonly #clock: Clock;

  constructor(options: { store: BrokerStore; clock: Clock }) {
    this.#store = options.store;
    this.#clock = options.clock;
  }

  async authenticate(token: string | undefined): Promise<Caller> {
    if (token?.startsWith(`${SESSION_PREFIX}_`)) return this.#session(token);
    const principal = token ? await this.#store.findPrincipalByTokenHash(hashSecret(token)) : undefined;
    if (!principal) throw new AuthError(token ? 'the API token is not valid' : 'no API token was sent');
    return { subject: principal.subject, roles: principal.roles, tokenId: principal.tokenId };
  }

  /** A CI job's OIDC session: requester only, with its token's claims, until it expires. */
  async #session(token: string): Promise<Caller> {
    const session = await this.#store.findSessionByTokenHash(hashSecret(token));
    if (!session) throw new AuthError('the session token is not valid');
    if (session.expiresAt <= this.#clock.now()) {
      throw new AuthError(`the CI session ${session.sessionId} ended at ${iso(session.expiresAt)}`, {
        code: 'session_expired',
        hint: "exchange the job's OIDC token again (any jit command in the job does); oidc.issuers[].sessionTtl sets how long a session lasts",
      });
    }
    return {
      subject: session.subject,
      roles: ['requester'],
      tokenId: session.sessionId,
      claims: session.claims,
      sessionExpiresAt: session.expiresAt,
    };
  }

  /** Mints a token for `request.subject`; `by` is who asked (an admin's subject, or BROKER_HOST). */
  async create(by: string, request: TokenRequest): Promise<CreatedToken> {
    const subject = checkTokenSubject(request.subject);
    const roles = checkRoles(request.roles);
    const label = request.label ?? null;
    if (label !== null && !LABEL.test(label)) {
      throw new UsageError('a token label is 1-100 characters without control characters', { code: 'invalid_label' });
    }
    const token = newSecret('jit');
    const now = this.#clock.now();
    const principal: PrincipalRecord = {
      tokenId: newId('tok'),
      subject,
      tokenHash: hashSecret(token),
      roles,
      label,
      createdBy: by,
      createdAt: now,
      revokedAt: null,
    };
    await this.#store.addPrincipal(principal, {
      at: now,
      type: 'token.created',
      subject,
      grantId: null,
      detail: { tokenId: principal.tokenId, roles, label, by },
    });
    return { ...tokenView(principal), token };
  }

  async list(): Promise<TokenView[]> {
    return (await this.#store.listPrincipals()).map(tokenView);
  }

  /** Revokes a token by its id (idempotent: revoking a revoked token says so and changes nothing). */
  async revoke(by: string, tokenId: string): Promise<TokenRevocation> {
    const now = this.#clock.now();
    const revoked = await this.#store.revokePrincipal(tokenId, now, {
      at: now,
      type: 'token.revoked',
      grantId: null,
      detail: { tokenId, by },
    });
    if (revoked) return { tokenId, subject: revoked.subject, revokedAt: iso(now), alreadyRevoked: false };
    const existing = (await this.#store.listPrincipals()).find((principal) => principal.tokenId === tokenId);
    if (!existing || existing.revokedAt === null) {
      throw new NotFoundError(`no token ${tokenId}`, { code: 'token_not_found', hint: 'list tokens with `jit broker token list`' });
    }
    return { tokenId, subject: existing.subject, revokedAt: iso(existing.revokedAt), alreadyRevoked: true };
  }
}
