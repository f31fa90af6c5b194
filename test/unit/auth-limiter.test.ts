import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AuthFailureLimiter, type RateLimitedError } from '../../src/broker/api/auth-limiter.ts';

describe('AuthFailureLimiter', () => {
  it('refuses a source after its budget of failures, until the window moves past them', () => {
    let now = 0;
    const limiter = new AuthFailureLimiter({ limit: 3, windowMs: 10_000, now: () => now });
    for (let attempt = 0; attempt < 3; attempt++) {
      limiter.check('10.0.0.1');
      limiter.recordFailure('10.0.0.1');
      now += 1000;
    }
    assert.throws(
      () => limiter.check('10.0.0.1'),
      (error: RateLimitedError) => error.httpStatus === 429 && error.retryAfterSeconds === 7,
    );
    limiter.check('10.0.0.2');
    now = 10_001;
    limiter.check('10.0.0.1');
  });
});
