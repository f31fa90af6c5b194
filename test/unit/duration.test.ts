import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatDuration, parseDuration } from '../../src/core/duration.ts';

describe('parseDuration', () => {
  it('reads units and their combinations', () => {
    assert.equal(parseDuration('90s'), 90);
    assert.equal(parseDuration('30m'), 1800);
    assert.equal(parseDuration('2h'), 7200);
    assert.equal(parseDuration('1h30m'), 5400);
    assert.equal(parseDuration('1d'), 86_400);
    assert.equal(parseDuration(' 2H '), 7200);
  });

  it('refuses bare numbers with a hint to add a unit', () => {
    assert.throws(
      () => parseDuration('30', '--ttl'),
      (error: Error & { hint?: string }) => {
        assert.match(error.message, /invalid --ttl "30"/);
        assert.match(error.hint ?? '', /30m or 30s/);
        return true;
      },
    );
  });

  for (const text of ['', 'abc', '1x', '-5m', '1.5h', 'm', '30m1h', '0s', '0h0m']) {
    it(`refuses ${JSON.stringify(text)}`, () => {
      assert.throws(
        () => parseDuration(text),
        (error: Error & { exitCode?: number }) => error.exitCode === 2,
      );
    });
  }
});

describe('formatDuration', () => {
  it('writes the shortest exact form', () => {
    assert.equal(formatDuration(5400), '1h30m');
    assert.equal(formatDuration(28_800), '8h');
    assert.equal(formatDuration(90_061), '1d1h1m1s');
    assert.equal(formatDuration(0), '0s');
  });

  it('round-trips', () => {
    for (const seconds of [1, 59, 60, 3599, 3600, 86_399, 86_400, 100_000]) assert.equal(parseDuration(formatDuration(seconds)), seconds);
  });
});
