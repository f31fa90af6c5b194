import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Alerts } from '../../src/broker/audit/alerts.ts';
import { outcomeOf } from '../../src/broker/audit/chain.ts';
import type { AlertHistory, AlertHistoryQuery, AuditEvent, AuditRow, PastRecord } from '../../src/broker/store/store.ts';

const T0 = 1_800_000_000_000;
/** A store with no other replica's records: what these rules decide from this replica's memory alone. */
const NO_HISTORY: AlertHistory = { alertHistory: async () => [] };
const NOW = T0 + 3_600_000;
let position = 0;

/** A sealed record as the sealer hands it to the alerts (hash irrelevant here). */
function row(action: string, fields: Partial<Omit<AuditRow, 'detail'>> & { detail?: Record<string, unknown> } = {}): AuditRow {
  position += 1;
  const { detail = {}, ...rest } = fields;
  return {
    position,
    at: T0,
    action,
    actor: 'user:ana',
    subject: 'user:ana',
    grantId: 'g_1',
    scope: 'datasets/train',
    outcome: outcomeOf(action),
    hash: 'h'.repeat(64),
    ...rest,
    detail: JSON.stringify(detail),
  };
}

const refused = (subject: string, at: number) => row('grant.refused', { subject, actor: subject, grantId: null, at });
const types = (alerts: AuditEvent[]) => alerts.map((alert) => alert.type);

describe('alert.denied_burst', () => {
  it('fires once, at the configured count of denials within the window', async () => {
    const alerts = new Alerts({ deniedBurst: 3, deniedWindowMs: 60_000 });
    assert.deepEqual(
      await alerts.inspect([refused('user:bo', T0), refused('user:bo', T0 + 10_000)], NOW, NO_HISTORY),
      [],
      'two are not a burst',
    );
    const third = refused('user:bo', T0 + 20_000);
    const [alert, ...more] = await alerts.inspect([third], NOW, NO_HISTORY);
    assert.equal(more.length, 0);
    assert.equal(alert?.type, 'alert.denied_burst');
    assert.equal(alert?.subject, 'user:bo');
    assert.equal(alert?.actor, 'system');
    assert.equal(alert?.at, NOW);
    assert.deepEqual(alert?.detail, { denials: 3, windowSeconds: 60, record: third.position });
    assert.deepEqual(
      await alerts.inspect([refused('user:bo', T0 + 21_000)], NOW, NO_HISTORY),
      [],
      'the fourth denial of the same burst raises nothing more',
    );
  });

  it('fires again for the next full burst, and counts each subject apart', async () => {
    const alerts = new Alerts({ deniedBurst: 3, deniedWindowMs: 60_000 });
    const rows = [];
    for (let index = 0; index < 6; index += 1) rows.push(refused('user:bo', T0 + index * 1000), refused('user:cy', T0 + index * 1000));
    const raised = await alerts.inspect(rows, NOW, NO_HISTORY);
    assert.deepEqual(
      raised.map((alert) => alert.subject),
      ['user:bo', 'user:cy', 'user:bo', 'user:cy'],
    );
    assert.ok(raised.every((alert) => alert.detail.denials === 3));
  });

  it('does not fire for denials spread out over more than the window', async () => {
    const alerts = new Alerts({ deniedBurst: 3, deniedWindowMs: 60_000 });
    // Any three consecutive denials span a full window or more.
    const rows = Array.from({ length: 10 }, (_, index) => refused('user:bo', T0 + index * 30_000));
    assert.deepEqual(await alerts.inspect(rows, NOW, NO_HISTORY), []);
  });

  it('counts every denied outcome (data.refused, denied approvals) and nothing else', async () => {
    const alerts = new Alerts({ deniedBurst: 2, deniedWindowMs: 60_000 });
    const okRows = [row('grant.issued'), row('data.read'), row('grant.requested')];
    assert.deepEqual(await alerts.inspect(okRows, NOW, NO_HISTORY), []);
    const denied = [row('data.refused', { detail: { reason: 'unknown_credential' } }), row('grant.denied')];
    assert.deepEqual(types(await alerts.inspect(denied, NOW, NO_HISTORY)), ['alert.denied_burst']);
  });

  it('ignores denials without a subject, and alert records themselves', async () => {
    const alerts = new Alerts({ deniedBurst: 1, deniedWindowMs: 60_000 });
    assert.deepEqual(await alerts.inspect([row('data.refused', { subject: null, grantId: null })], NOW, NO_HISTORY), []);
    assert.deepEqual(await alerts.inspect([row('alert.denied_burst', { outcome: 'denied' })], NOW, NO_HISTORY), []);
  });
});

describe('alert.ended_credential_used', () => {
  it('fires when an ended grant’s credential is presented', async () => {
    const alerts = new Alerts();
    const use = row('data.refused', { grantId: 'g_7', detail: { reason: 'grant_ended', state: 'revoked', source: '10.0.0.9' } });
    const [alert] = await alerts.inspect([use], NOW, NO_HISTORY);
    assert.equal(alert?.type, 'alert.ended_credential_used');
    assert.equal(alert?.grantId, 'g_7');
    assert.equal(alert?.subject, 'user:ana');
    assert.deepEqual(alert?.detail, { state: 'revoked', source: '10.0.0.9', record: use.position });
  });

  it('does not fire for other refusals', async () => {
    const alerts = new Alerts();
    const rows = [
      row('data.refused', { grantId: null, detail: { reason: 'unknown_credential' } }),
      row('data.refused', { detail: { reason: 'grant_pending' } }),
    ];
    assert.deepEqual(await alerts.inspect(rows, NOW, NO_HISTORY), []);
  });
});

describe('alert.budget_exhausted', () => {
  it('fires when a grant is suspended', async () => {
    const alerts = new Alerts();
    const suspended = row('grant.suspended', { grantId: 'g_8', detail: { reason: 'request budget of 100 used up' } });
    const [alert, ...more] = await alerts.inspect([suspended], NOW, NO_HISTORY);
    assert.equal(more.length, 0);
    assert.equal(alert?.type, 'alert.budget_exhausted');
    assert.equal(alert?.grantId, 'g_8');
    assert.deepEqual(alert?.detail, { reason: 'request budget of 100 used up', record: suspended.position });
  });
});

describe('alert.host_mismatch', () => {
  it('fires once per grant when its credential is used from another address than the one that requested it', async () => {
    const alerts = new Alerts();
    const issued = row('grant.issued', { grantId: 'g_9', detail: { source: '10.0.0.1' } });
    const elsewhere = row('data.read', { grantId: 'g_9', detail: { source: '10.0.0.2', path: 'a' } });
    const again = row('data.read', { grantId: 'g_9', detail: { source: '10.0.0.3', path: 'b' } });
    const raised = await alerts.inspect([issued, elsewhere, again], NOW, NO_HISTORY);
    assert.deepEqual(types(raised), ['alert.host_mismatch']);
    assert.equal(raised[0]?.grantId, 'g_9');
    assert.deepEqual(raised[0]?.detail, { requestedFrom: '10.0.0.1', usedFrom: '10.0.0.2', record: elsewhere.position });
    assert.deepEqual(
      await alerts.inspect([row('data.write', { grantId: 'g_9', detail: { source: '10.0.0.4' } })], NOW, NO_HISTORY),
      [],
      'a later batch too',
    );
  });

  it('does not fire when the addresses are equal, or for records that are not data touches', async () => {
    const alerts = new Alerts();
    const rows = [
      row('grant.issued', { grantId: 'g_10', detail: { source: '10.0.0.1' } }),
      row('data.read', { grantId: 'g_10', detail: { source: '10.0.0.1' } }),
      row('data.write', { grantId: 'g_10', detail: { source: '10.0.0.1' } }),
      row('grant.heartbeat', { grantId: 'g_10', detail: { source: '10.0.0.2' } }),
      row('grant.revoked', { grantId: 'g_10', detail: { source: '10.0.0.2' } }),
    ];
    assert.deepEqual(await alerts.inspect(rows, NOW, NO_HISTORY), []);
  });

  it('compares with a grant requested before approval too, and keeps grants apart', async () => {
    const alerts = new Alerts();
    const rows = [
      row('grant.requested', { grantId: 'g_11', detail: { source: '10.0.0.1' } }),
      row('grant.issued', { grantId: 'g_12', detail: { source: '10.0.0.2' } }),
      row('data.read', { grantId: 'g_12', detail: { source: '10.0.0.2' } }),
      row('data.read', { grantId: 'g_11', detail: { source: '10.0.0.2' } }),
    ];
    const raised = await alerts.inspect(rows, NOW, NO_HISTORY);
    assert.deepEqual(
      raised.map((alert) => alert.grantId),
      ['g_11'],
    );
  });

  it('says nothing about a grant whose request it did not see, or a touch without an address', async () => {
    const alerts = new Alerts();
    const rows = [
      row('data.read', { grantId: 'g_13', detail: { source: '10.0.0.2' } }),
      row('grant.issued', { grantId: 'g_14', detail: { source: '10.0.0.1' } }),
      row('data.read', { grantId: 'g_14', detail: {} }),
    ];
    assert.deepEqual(await alerts.inspect(rows, NOW, NO_HISTORY), []);
  });
});

describe('history', () => {
  it('raises nothing for records from before the sealer started (an upgrade sealing an old backlog)', async () => {
    const alerts = new Alerts({ deniedBurst: 2, deniedWindowMs: 60_000 }, T0 + 3_600_000);
    const old = row('data.refused', { grantId: 'g_9', detail: { reason: 'grant_ended', state: 'revoked' } });
    assert.deepEqual(
      types(await alerts.inspect([old, refused('user:bo', T0), refused('user:bo', T0 + 1)], T0 + 3_600_000, NO_HISTORY)),
      [],
    );
    const fresh = row('data.refused', { grantId: 'g_9', at: T0 + 3_600_000, detail: { reason: 'grant_ended', state: 'revoked' } });
    assert.deepEqual(types(await alerts.inspect([fresh], T0 + 3_600_001, NO_HISTORY)), ['alert.ended_credential_used']);
  });
});

describe('across replicas: what the store holds from other replicas', () => {
  /** A history holding `records` (as other replicas sealed or raised them); it records what it was asked. */
  const historyOf = (records: PastRecord[]) => {
    const asked: AlertHistoryQuery[] = [];
    const history: AlertHistory = {
      alertHistory: async (query) => {
        asked.push(query);
        return records;
      },
    };
    return { history, asked };
  };
  const past = (action: string, fields: Partial<Omit<PastRecord, 'detail'>> & { detail?: Record<string, unknown> } = {}): PastRecord => {
    const { detail = {}, ...rest } = fields;
    return {
      position: null,
      at: T0,
      action,
      subject: 'user:ana',
      grantId: 'g_1',
      outcome: outcomeOf(action),
      ...rest,
      detail: JSON.stringify(detail),
    };
  };

  it('counts the denials another replica sealed toward a burst', async () => {
    const alerts = new Alerts({ deniedBurst: 3, deniedWindowMs: 60_000 });
    const elsewhere = [1, 2].map((index) =>
      past('grant.refused', { subject: 'user:bo', grantId: null, position: position + index, at: T0 }),
    );
    position += 2;
    const third = refused('user:bo', T0 + 1000);
    const { history, asked } = historyOf(elsewhere);
    const [alert] = await alerts.inspect([third], NOW, history);
    assert.deepEqual(alert?.detail, { denials: 3, windowSeconds: 60, record: third.position });
    assert.deepEqual(asked, [{ grantIds: [], subjects: [{ subject: 'user:bo', denials: 3 }] }], 'its last denials: one here, two before');
  });

  it('starts over after a burst another replica raised', async () => {
    const alerts = new Alerts({ deniedBurst: 3, deniedWindowMs: 60_000 });
    const before = [1, 2, 3].map((index) => past('grant.refused', { subject: 'user:bo', grantId: null, position: position + index }));
    position += 3;
    const burst = past('alert.denied_burst', { subject: 'user:bo', grantId: null, detail: { record: before[2]?.position } });
    const { history } = historyOf([...before, burst]);
    assert.deepEqual(await alerts.inspect([refused('user:bo', T0 + 1000), refused('user:bo', T0 + 2000)], NOW, history), []);
  });

  it('checks a grant requested through another replica, and leaves a mismatch another replica raised', async () => {
    const alerts = new Alerts();
    const requested = past('grant.issued', { grantId: 'g_20', position: 1, detail: { source: '10.0.0.1' } });
    const use = row('data.read', { grantId: 'g_20', detail: { source: '10.0.0.2' } });
    const { history, asked } = historyOf([requested]);
    const raised = await alerts.inspect([use], NOW, history);
    assert.deepEqual(raised[0]?.detail, { requestedFrom: '10.0.0.1', usedFrom: '10.0.0.2', record: use.position });
    assert.deepEqual(asked, [{ grantIds: ['g_20'], subjects: [] }]);
    const again = row('data.read', { grantId: 'g_20', detail: { source: '10.0.0.3' } });
    assert.deepEqual(await alerts.inspect([again], NOW, history), [], 'once per grant');
    assert.equal(asked.length, 1, 'remembered: not asked again');

    const other = new Alerts();
    const mismatch = past('alert.host_mismatch', { grantId: 'g_20', detail: { record: use.position } });
    assert.deepEqual(await other.inspect([again], NOW, historyOf([requested, mismatch]).history), [], 'raised elsewhere already');
  });

  it('asks nothing for a batch of touches by grants whose requests it sealed', async () => {
    const alerts = new Alerts();
    const { history, asked } = historyOf([]);
    const rows = [
      row('grant.issued', { grantId: 'g_21', detail: { source: '10.0.0.1' } }),
      row('data.read', { grantId: 'g_21', detail: { source: '10.0.0.1' } }),
    ];
    assert.deepEqual(await alerts.inspect(rows, NOW, history), []);
    assert.deepEqual(await alerts.inspect([row('data.write', { grantId: 'g_21', detail: { source: '10.0.0.1' } })], NOW, history), []);
    assert.deepEqual(asked, []);
  });
});

describe('a sealed batch that rolled back', () => {
  it('raises its alerts again when sealed again, once forget() dropped what the first try remembered', async () => {
    const alerts = new Alerts({ deniedBurst: 2, deniedWindowMs: 60_000 });
    const burst = [refused('user:bo', T0), refused('user:bo', T0 + 1_000)];
    const issued = row('grant.issued', { grantId: 'g_9', detail: { source: '10.0.0.1' } });
    const touch = row('data.read', { grantId: 'g_9', detail: { source: '10.0.0.2' } });
    const batch = [...burst, issued, touch];
    assert.deepEqual(types(await alerts.inspect(batch, NOW, NO_HISTORY)), ['alert.denied_burst', 'alert.host_mismatch']);
    // The transaction that held those alerts failed: the store has neither them nor the batch.
    assert.deepEqual(types(await alerts.inspect(batch, NOW, NO_HISTORY)), [], 'without forget, memory says they were raised');
    alerts.forget();
    assert.deepEqual(types(await alerts.inspect(batch, NOW, NO_HISTORY)), ['alert.denied_burst', 'alert.host_mismatch']);
  });
});
