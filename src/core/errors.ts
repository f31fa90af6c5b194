/**
 * One error vocabulary for the CLI and the broker. Every failure a user can cause or meet carries
 * an exit code (docs/exit-codes.md), an HTTP status when it crosses the API, a stable code for
 * scripts, and a hint that says what to do.
 */
export const ExitCode = {
  ok: 0,
  unexpected: 1,
  usage: 2,
  auth: 3,
  denied: 4,
  notFound: 5,
  brokerUnreachable: 6,
  keychain: 7,
  conflict: 8,
  pending: 9,
  tampered: 10,
  cannotRun: 126,
  commandNotFound: 127,
} as const;

export type ErrorOptions = { hint?: string; code?: string; cause?: unknown };

export class JitError extends Error {
  readonly exitCode: number;
  readonly httpStatus: number;
  readonly code: string;
  readonly hint: string | undefined;

  constructor(message: string, exitCode: number, httpStatus: number, code: string, options: ErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = new.target.name;
    this.exitCode = exitCode;
    this.httpStatus = httpStatus;
    this.code = options.code ?? code;
    this.hint = options.hint;
  }

  toJSON(): { code: string; message: string; hint?: string } {
    return { code: this.code, message: this.message, ...(this.hint ? { hint: this.hint } : {}) };
  }
}

export class UsageError extends JitError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.usage, 400, 'invalid_request', options);
  }
}

export class AuthError extends JitError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.auth, 401, 'unauthenticated', { hint: 'run `jit login --broker URL`, or set JIT_TOKEN', ...options });
  }
}

export class DeniedError extends JitError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.denied, 403, 'denied', options);
  }
}

/** The caller is known but its token's roles do not allow the call (docs/principals.md). */
export class ForbiddenError extends JitError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.denied, 403, 'forbidden', options);
  }
}

/**
 * A request still waits for approval: `--no-wait`, or the wait ran out (docs/exit-codes.md). Its
 * JSON form carries the grant id, so a script can pick the grant up later (`jit run --grant`).
 */
export class PendingError extends JitError {
  readonly grantId: string | undefined;

  constructor(message: string, options?: ErrorOptions & { grantId?: string }) {
    super(message, ExitCode.pending, 409, 'approval_pending', options);
    this.grantId = options?.grantId;
  }

  override toJSON(): { code: string; message: string; hint?: string; grantId?: string } {
    return { ...super.toJSON(), ...(this.grantId ? { grantId: this.grantId } : {}) };
  }
}

export class NotFoundError extends JitError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.notFound, 404, 'not_found', options);
  }
}

export class ConflictError extends JitError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.conflict, 409, 'conflict', options);
  }
}

export class BrokerUnreachableError extends JitError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.brokerUnreachable, 503, 'broker_unreachable', options);
  }
}

export class KeychainError extends JitError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.keychain, 500, 'keychain_unavailable', options);
  }
}

/** Rebuilds the typed error a broker sent over HTTP, so the CLI exits as if it had raised it. */
export function errorFromHttp(status: number, body: { code?: string; message?: string; hint?: string } | undefined): JitError {
  const message = body?.message ?? `the broker answered HTTP ${status}`;
  const options = { code: body?.code, hint: body?.hint };
  switch (status) {
    case 400:
    case 422:
      return new UsageError(message, options);
    case 401:
      return new AuthError(message, { code: body?.code, ...(body?.hint ? { hint: body.hint } : {}) });
    case 403:
      return new DeniedError(message, options);
    case 404:
      return new NotFoundError(message, options);
    case 409:
      return new ConflictError(message, options);
    case 429:
      return new JitError(message, ExitCode.auth, 429, body?.code ?? 'rate_limited', options);
    default:
      return new JitError(
        message,
        status >= 500 ? ExitCode.brokerUnreachable : ExitCode.unexpected,
        status,
        body?.code ?? 'broker_error',
        options,
      );
  }
}

/** `jit audit verify`: the audit chain was edited, cut or replaced (docs/audit.md#verify). */
export class TamperedError extends JitError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.tampered, 409, 'audit_tampered', options);
  }
}
