import { JitError } from '../../core/errors.ts';

/**
 * Failed authentication, rate-limited per source address: after `limit` failures inside `window`
 * ms, that address gets 429 until the oldest failure leaves the window. Successes cost nothing,
 * so a job reading thousands of files is never slowed; guessing tokens is. Per broker process.
 */
export class AuthFailureLimiter {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  readonly #failures = new Map<string, number[]>();

  constructor(options: { limit?: number; windowMs?: number; now?: () => number } = {}) {
    this.#limit = options.limit ?? 20;
    this.#windowMs = options.windowMs ?? 60_000;
    this.#now = options.now ?? Date.now;
  }

  /** Throws a 429 error while `source` is over its budget of failures. */
  check(source: string): void {
    const recent = this.#recent(source);
    if (recent.length < this.#limit) return;
    const retryAfterSeconds = Math.max(1, Math.ceil(((recent[0] ?? 0) + this.#windowMs - this.#now()) / 1000));
    throw new RateLimitedError(retryAfterSeconds);
  }

  recordFailure(source: string): void {
    const recent = this.#recent(source);
    recent.push(this.#now());
    this.#failures.set(source, recent);
    if (this.#failures.size > 10_000) this.#prune();
  }

  #recent(source: string): number[] {
    const since = this.#now() - this.#windowMs;
    return (this.#failures.get(source) ?? []).filter((at) => at > since);
  }

  #prune(): void {
    for (const source of this.#failures.keys()) if (this.#recent(source).length === 0) this.#failures.delete(source);
  }
}

export class RateLimitedError extends JitError {
  readonly retryAfterSeconds: number;

  constructor(retryAfterSeconds: number) {
    super(`too many failed authentication attempts from this address`, 3, 429, 'rate_limited', {
      hint: `retry in ${retryAfterSeconds} s with a valid token`,
    });
    this.retryAfterSeconds = retryAfterSeconds;
  }
}
