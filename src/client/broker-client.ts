import type { Got, HTTPError, RequestError } from 'got';
import type { AuditRecord, VerifyReport } from '../core/audit.ts';
import type { Role } from '../core/caller.ts';
import { AuthError, BrokerUnreachableError, errorFromHttp, JitError } from '../core/errors.ts';
import type { GrantView, IssuedGrant, RevocationReceipt } from '../core/grant.ts';
import type { CreatedToken, TokenRequest, TokenRevocation, TokenView } from '../core/token.ts';
import { canonicalUrl } from '../core/url.ts';

/** One page of GET /v1/audit; `next` is the cursor (`after`) of the following page, null on the last. */
export type AuditPage = { records: AuditRecord[]; next: number | null };

function definedOnly(values: Record<string, string | number | undefined>): Record<string, string> {
  return Object.fromEntries(Object.entries(values).flatMap(([key, value]) => (value === undefined ? [] : [[key, String(value)]])));
}

/** What POST /v1/auth/oidc answers; `session` is the bearer, shown in this response only. */
export type OidcSessionView = { session: string; sessionId: string; subject: string; issuer: string; roles: Role[]; expiresAt: string };

export type ClientOptions = {
  brokerUrl: string;
  token?: string;
  /** Per-attempt timeout; the CLI shortens it for best-effort work such as reaping. */
  timeoutMs?: number;
  retries?: number;
};

/**
 * The broker's /v1 API over got. Idempotent calls retry on network failure and 5xx; every
 * failure becomes a typed JitError here, in one place, so commands never see a raw HTTP error.
 */
export class BrokerClient {
  readonly brokerUrl: string;
  readonly #options: ClientOptions;
  readonly #hasToken: boolean;
  #got: Promise<{ http: Got; HTTPError: typeof HTTPError; RequestError: typeof RequestError }> | undefined;

  constructor(options: ClientOptions) {
    this.brokerUrl = canonicalUrl(options.brokerUrl);
    this.#options = options;
    this.#hasToken = Boolean(options.token);
  }

  /** got, loaded on the first call: commands that never reach the broker start without it. */
  #client() {
    this.#got ??= import('got').then(({ default: got, HTTPError, RequestError }) => ({ http: this.#extend(got), HTTPError, RequestError }));
    return this.#got;
  }

  #extend(got: Got): Got {
    const options = this.#options;
    return got.extend({
      prefixUrl: `${this.brokerUrl}/v1`,
      headers: { 'user-agent': 'jit-cli', ...(options.token ? { authorization: `Bearer ${options.token}` } : {}) },
      timeout: { request: options.timeoutMs ?? 10_000 },
      retry: { limit: options.retries ?? 2, methods: ['GET', 'DELETE', 'POST'], statusCodes: [502, 503, 504], backoffLimit: 2_000 },
      responseType: 'json',
    });
  }

  /** Needs no token. `date` is the response's HTTP Date header (the broker's clock), when sent. */
  health(): Promise<{ status: string; version: string; date: string | undefined }> {
    return this.#call(async (http) => {
      const response = await http.get<{ status: string; version: string }>('health');
      return { ...response.body, date: response.headers.date };
    });
  }

  whoami(): Promise<{ subject: string; roles: Role[]; tokenId: string; expiresAt?: string }> {
    return this.#authed((http) => http.get('whoami').json());
  }

  /** Needs no token: a CI job's OIDC identity token for a requester session (docs/ci.md#oidc). */
  exchangeOidc(token: string): Promise<OidcSessionView> {
    return this.#call((http) => http.post('auth/oidc', { json: { token } }).json());
  }

  /** The caller's grants in every state, newest first, as the broker sees them. */
  listGrants(): Promise<{ grants: GrantView[] }> {
    return this.#authed((http) => http.get('grants').json());
  }

  /** Not retried on its own: a lost response would otherwise issue two grants. */
  requestGrant(body: { scopes: string[]; ttlSeconds?: number; reason?: string; heartbeat?: boolean }): Promise<IssuedGrant> {
    return this.#authed((http) => http.post('grants', { json: body, retry: { limit: 0 } }).json());
  }

  getGrant(id: string): Promise<GrantView> {
    return this.#authed((http) => http.get(`grants/${encodeURIComponent(id)}`).json());
  }

  renewGrant(id: string, ttlSeconds?: number): Promise<GrantView> {
    return this.#authed((http) => http.post(`grants/${encodeURIComponent(id)}/renew`, { json: { ttlSeconds } }).json());
  }

  /** Pending requests the caller may approve or deny. */
  reviewable(): Promise<{ grants: GrantView[] }> {
    return this.#authed((http) => http.get('approvals').json());
  }

  approve(id: string, reason?: string): Promise<GrantView> {
    return this.#authed((http) => http.post(`grants/${encodeURIComponent(id)}/approve`, { json: { reason }, retry: { limit: 0 } }).json());
  }

  deny(id: string, reason: string): Promise<GrantView> {
    return this.#authed((http) => http.post(`grants/${encodeURIComponent(id)}/deny`, { json: { reason }, retry: { limit: 0 } }).json());
  }

  heartbeat(id: string): Promise<GrantView> {
    return this.#authed((http) => http.post(`grants/${encodeURIComponent(id)}/heartbeat`, { retry: { limit: 0 } }).json());
  }

  revokeGrant(id: string): Promise<RevocationReceipt> {
    return this.#authed((http) => http.delete(`grants/${encodeURIComponent(id)}`).json());
  }

  /** Admin only. Not retried on its own: a lost response would otherwise mint two tokens. */
  createToken(body: TokenRequest): Promise<CreatedToken> {
    return this.#authed((http) => http.post('tokens', { json: body, retry: { limit: 0 } }).json());
  }

  listTokens(): Promise<{ tokens: TokenView[] }> {
    return this.#authed((http) => http.get('tokens').json());
  }

  revokeToken(tokenId: string): Promise<TokenRevocation> {
    return this.#authed((http) => http.delete(`tokens/${encodeURIComponent(tokenId)}`).json());
  }

  /** One page of the audit trail (docs/api.md#audit): filters as GET /v1/audit takes them. */
  queryAudit(filters: Record<string, string | number | undefined>): Promise<AuditPage> {
    return this.#authed((http) => http.get('audit', { searchParams: definedOnly(filters) }).json());
  }

  /** The broker re-computes its whole chain: slow on a big trail, hence the long timeout. */
  verifyAudit(): Promise<VerifyReport> {
    return this.#authed((http) => http.get('audit/verify', { timeout: { request: 10 * 60_000 }, retry: { limit: 0 } }).json());
  }

  auditKey(): Promise<{ keyId: string; algorithm: string; publicKey: string }> {
    return this.#authed((http) => http.get('audit/key').json());
  }

  /**
   * Opens GET /v1/audit/stream (server-sent events), resuming after `lastEventId` when given.
   * The body is the raw event stream (client/sse.ts reads it); a refusal is a typed JitError.
   */
  async openAuditStream(
    filters: Record<string, string | number | undefined>,
    lastEventId: number | undefined,
    signal: AbortSignal,
  ): Promise<ReadableStream<Uint8Array>> {
    if (!this.#hasToken) throw new AuthError(`not logged in to ${this.brokerUrl}`);
    const query = new URLSearchParams(definedOnly(filters)).toString();
    let response: Response;
    try {
      response = await fetch(`${this.brokerUrl}/v1/audit/stream${query ? `?${query}` : ''}`, {
        headers: {
          accept: 'text/event-stream',
          'user-agent': 'jit-cli',
          authorization: `Bearer ${this.#options.token}`,
          ...(lastEventId === undefined ? {} : { 'last-event-id': String(lastEventId) }),
        },
        signal,
      });
    } catch (error) {
      if (signal.aborted) throw error;
      const cause = (error as { cause?: { code?: string } }).cause;
      throw new BrokerUnreachableError(`cannot reach the broker at ${this.brokerUrl} (${cause?.code ?? (error as Error).message})`, {
        hint: 'check that it is running and that the URL (jit login --broker, JIT_BROKER_URL) is right',
        cause: error,
      });
    }
    if (!response.ok || !response.body) {
      const problem = (await response.json().catch(() => undefined)) as { code?: string; detail?: string; hint?: string } | undefined;
      throw errorFromHttp(response.status, problem && { code: problem.code, message: problem.detail, hint: problem.hint });
    }
    return response.body;
  }

  #authed<T>(call: (http: Got) => Promise<T>): Promise<T> {
    if (!this.#hasToken) return Promise.reject(new AuthError(`not logged in to ${this.brokerUrl}`));
    return this.#call(call);
  }

  async #call<T>(call: (http: Got) => Promise<T>): Promise<T> {
    const { http, HTTPError, RequestError } = await this.#client();
    try {
      return await call(http);
    } catch (error) {
      throw this.#translate(error, HTTPError, RequestError);
    }
  }

  #translate(error: unknown, HTTPError: typeof import('got').HTTPError, RequestError: typeof import('got').RequestError): JitError {
    if (error instanceof HTTPError) {
      // RFC 9457 problem details (docs/api.md#errors); anything else (a proxy's page) has none of these.
      const body = error.response.body as { code?: string; detail?: string; hint?: string } | undefined;
      const problem = body && typeof body === 'object' ? body : undefined;
      return errorFromHttp(error.response.statusCode, problem && { code: problem.code, message: problem.detail, hint: problem.hint });
    }
    if (error instanceof RequestError) {
      const { code, message } = error;
      const reason = code === 'ECONNREFUSED' ? 'connection refused' : code === 'ETIMEDOUT' ? 'timed out' : (code ?? message);
      return new BrokerUnreachableError(`cannot reach the broker at ${this.brokerUrl} (${reason})`, {
        hint: 'check that it is running and that the URL (jit login --broker, JIT_BROKER_URL) is right',
        cause: error,
      });
    }
    return error instanceof JitError ? error : new JitError(String(error), 1, 500, 'unexpected');
  }
}
