import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Chalk } from 'chalk';
import { recordLine, summarize } from '../../src/cli/audit-render.ts';
import { printable } from '../../src/cli/printable.ts';
import type { AuditRecord } from '../../src/core/audit.ts';

const plain = new Chalk({ level: 0 });

function record(overrides: Partial<AuditRecord> = {}): AuditRecord {
  return {
    seq: 7,
    at: '2026-11-25T17:06:03.261Z',
    action: 'grant.refused',
    actor: 'user:ana',
    subject: 'user:ana',
    grant: null,
    scope: 'datasets/eval',
    outcome: 'denied',
    details: { code: 'policy_denied' },
    hash: 'ab'.repeat(32),
    ...overrides,
  };
}

describe('audit records on a terminal', () => {
  it('shows a record as one line: time, outcome, action, actor, grant, scope, details', () => {
    assert.equal(
      recordLine(record(), plain),
      '17:06:03.261  denied   grant.refused             user:ana  -  datasets/eval  code=policy_denied',
    );
  });

  it('shows where a database session came from and what it calls itself, never more than a glance', () => {
    const session = record({
      action: 'data.session',
      outcome: 'ok',
      grant: 'g_01a213abe97dc24ed4e9',
      scope: 'warehouse/public.orders:select',
      details: {
        resource: 'warehouse',
        role: 'jit_g_01a213abe97dc24ed4e9',
        database: 'dw',
        pid: 4242,
        address: '10.0.4.7',
        applicationName: 'nightly-report',
        backendStart: '2026-11-25T17:06:02.900Z',
      },
    });
    assert.equal(
      recordLine(session, plain),
      '17:06:03.261  ok       data.session              user:ana  g_01a213abe97dc24ed4e9  warehouse/public.orders:select  address=10.0.4.7 applicationName=nightly-report',
    );
  });

  it("makes control characters in someone else's text visible instead of obeying them", () => {
    const forged = '\x1b[2K\r\x1b[32mok grant.issued user:boss';
    const line = recordLine(record({ details: { reason: forged }, actor: 'user:\x1b[1mana' }), plain);
    assert.ok(!line.includes('\x1b'), 'no escape reaches the terminal');
    assert.ok(!line.includes('\r'), 'no carriage return reaches the terminal');
    assert.match(line, /user:\\u001b\[1mana/);
    assert.match(summarize(record({ details: { reason: forged } })), /^reason=\\u001b\[2K\\u000d/);
    assert.equal(printable('tab\there\u009bC1 and \u007f'), 'tab\\u0009here\\u009bC1 and \\u007f');
    assert.equal(printable('ünïcødé stays'), 'ünïcødé stays');
  });
});
