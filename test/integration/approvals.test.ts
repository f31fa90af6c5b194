import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { AuditRecord } from '../../src/core/audit.ts';
import type { GrantView, IssuedGrant, RevocationReceipt } from '../../src/core/grant.ts';
import { api, createToken, readGranted, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { postgresSkipReason } from '../helpers/postgres.ts';

/** An RFC 9457 problem-details error body (docs/api.md#errors). */
type ErrorBody = { type: string; status: number; code: string; detail: string; hint?: string; requestId: string };

/** eval data waits for two data owners; train data is granted at once. olga is in both groups. */
const POLICY = `policy:
  rules:
    - name: train
      subjects: ["group:ml-team"]
      scopes: ["datasets/train/**"]
      defaultTtl: 1h
      maxTtl: 2h
    - name: eval-needs-owners
      subjects: ["group:ml-team"]
      scopes: ["datasets/eval/**"]
      defaultTtl: 1h
      maxTtl: 2h
      approval: { required: true, approvers: ["group:data-owners"], count: 2 }
  groups:
    ml-team: ["user:ana", "user:olga"]
    data-owners: ["user:olga", "user:pat", "user:quinn"]
`;

const HOUR = 3_600_000;

for (const store of ['sqlite', 'postgres'] as const) {
  const skip = store === 'postgres' ? await postgresSkipReason() : undefined;

  describe(`approvals and renewal (${store})`, { skip }, () => {
    let broker: TestBroker;
    let offset = 0;
    const tokens: Record<string, string> = {};
    const as = <T>(who: string, method: string, route: string, body?: unknown) =>
      api<T & ErrorBody>(broker, tokens[who] ?? '', method, route, body);
    /**
     * A grant's audit trail as an auditor reads it (GET /v1/audit), as [action, actor, outcome] and
     * the records; alerts are left out (they are raised moments after what they are about).
     */
    const trail = async (id: string) => {
      const all = (await api<{ records: AuditRecord[] }>(broker, broker.token, 'GET', `audit?grant=${id}`)).body.records;
      const records = all.filter((record) => !record.action.startsWith('alert.'));
      return { records, summary: records.map((record) => [record.action, record.actor, record.outcome]) };
    };
    const requestEval = (who = 'ana', extra: Record<string, unknown> = {}) =>
      as<IssuedGrant>(who, 'POST', 'grants', { scopes: ['datasets/eval/holdout.jsonl'], reason: 'eval run 7', ...extra });

    before(async () => {
      broker = await startTestBroker({ store, policy: POLICY, clock: { now: () => Date.now() + offset } });
      tokens.ana = await createToken(broker, 'user:ana', ['requester']);
      tokens.olga = await createToken(broker, 'user:olga', ['requester', 'approver']);
      tokens.pat = await createToken(broker, 'user:pat', ['approver']);
      tokens.quinn = await createToken(broker, 'user:quinn', ['approver']);
      tokens.rex = await createToken(broker, 'user:rex', ['approver']);
    });
    after(() => broker.cleanup());

    it('holds a request that needs approval as pending (202), its credential refused until approved', async () => {
      const requested = await requestEval();
      assert.equal(requested.status, 202);
      assert.equal(requested.body.state, 'pending');
      assert.equal(requested.body.expiresAt, null);
      assert.deepEqual(requested.body.approval?.requirements, [
        { scopes: ['datasets/eval/holdout.jsonl'], approvers: ['group:data-owners'], count: 2, approvedBy: [] },
      ]);
      const read = await readGranted(broker.url, requested.body.credential, 'datasets/eval/holdout.jsonl');
      assert.equal(read.status, 401);
      assert.equal((JSON.parse(read.text) as ErrorBody).code, 'grant_pending');
    });

    it('lists a request for its approvers only, and never for the requester', async () => {
      const { body } = await requestEval();
      const listed = async (who: string) => (await as<{ grants: GrantView[] }>(who, 'GET', 'approvals')).body.grants?.map((g) => g.id);
      assert.ok((await listed('pat'))?.includes(body.id));
      assert.ok((await listed('olga'))?.includes(body.id), 'olga owns data and did not ask');
      assert.ok(!(await listed('rex'))?.includes(body.id), 'rex approves, but not for this rule');
      const requester = await as('ana', 'GET', 'approvals');
      assert.equal(requester.status, 403);
      assert.equal(requester.body.code, 'forbidden');
    });

    it('activates a request on its second distinct approval, with the TTL counted from then', async () => {
      const { body } = await requestEval();
      const first = await as<GrantView>('pat', 'POST', `grants/${body.id}/approve`, { reason: 'ok for eval' });
      assert.equal(first.status, 200);
      assert.equal(first.body.state, 'pending');
      assert.deepEqual(first.body.approval?.requirements[0]?.approvedBy, ['user:pat']);
      const waiting = async (who: string) => (await as<{ grants: GrantView[] }>(who, 'GET', 'approvals')).body.grants.map((g) => g.id);
      assert.ok(!(await waiting('pat')).includes(body.id), 'no longer waiting for pat, who approved it');
      assert.ok((await waiting('quinn')).includes(body.id), 'still waiting for the others');
      const again = await as('pat', 'POST', `grants/${body.id}/approve`, {});
      assert.equal(again.status, 409);
      assert.equal(again.body.code, 'already_reviewed');
      assert.equal((await readGranted(broker.url, body.credential, 'datasets/eval/holdout.jsonl')).status, 401);

      const before = Date.now() + offset;
      const second = await as<GrantView>('quinn', 'POST', `grants/${body.id}/approve`, {});
      assert.equal(second.body.state, 'active');
      const expiresIn = Date.parse(second.body.expiresAt ?? '') - before;
      assert.ok(expiresIn >= HOUR - 1000 && expiresIn <= HOUR + 5000, `expires ${expiresIn} ms after approval`);
      const read = await readGranted(broker.url, body.credential, 'datasets/eval/holdout.jsonl');
      assert.equal(read.status, 200);
      assert.match(read.text, /secret eval item/);

      const events = await broker.broker.grants.events(body.id);
      assert.deepEqual(
        events.map((event) => event.type),
        ['grant.requested', 'grant.approved', 'data.refused', 'grant.approved', 'grant.activated', 'data.read'],
      );
    });

    it('refuses self-approval, approvers of other rules, and tokens without the approver role', async () => {
      const { body } = await requestEval('olga');
      const self = await as('olga', 'POST', `grants/${body.id}/approve`, {});
      assert.equal(self.status, 403);
      assert.equal(self.body.code, 'self_approval');
      const stranger = await as('rex', 'POST', `grants/${body.id}/approve`, {});
      assert.equal(stranger.status, 403);
      assert.equal(stranger.body.code, 'not_an_approver');
      assert.match(stranger.body.detail, /needs 2 of group:data-owners/);
      const requesterOnly = await as('ana', 'POST', `grants/${body.id}/approve`, {});
      assert.equal(requesterOnly.status, 403);
      assert.equal(requesterOnly.body.code, 'forbidden');
      const view = await as<GrantView>('olga', 'GET', `grants/${body.id}`);
      assert.deepEqual(view.body.approval?.requirements[0]?.approvedBy, [], 'no refused review counted');
    });

    it('ends a request at the first denial, with the reason the requester sees', async () => {
      const { body } = await requestEval();
      await as('pat', 'POST', `grants/${body.id}/approve`, {});
      const noReason = await as('quinn', 'POST', `grants/${body.id}/deny`, {});
      assert.equal(noReason.status, 400);
      const denied = await as<GrantView>('quinn', 'POST', `grants/${body.id}/deny`, { reason: 'holdout stays sealed until v8' });
      assert.equal(denied.body.state, 'denied');
      assert.deepEqual(denied.body.approval?.deniedBy, { approver: 'user:quinn', reason: 'holdout stays sealed until v8' });
      const seen = await as<GrantView>('ana', 'GET', `grants/${body.id}`);
      assert.equal(seen.body.endReason, 'denied by user:quinn: holdout stays sealed until v8');
      const late = await as('olga', 'POST', `grants/${body.id}/approve`, {});
      assert.equal(late.status, 409);
      assert.equal(late.body.code, 'not_pending');
      assert.equal((await readGranted(broker.url, body.credential, 'datasets/eval/holdout.jsonl')).status, 401);
      const { records, summary } = await trail(body.id);
      assert.deepEqual(summary, [
        ['grant.requested', 'user:ana', 'pending'],
        ['grant.approved', 'user:pat', 'ok'],
        ['grant.denied', 'user:quinn', 'denied'],
        ['data.refused', 'user:ana', 'denied'],
      ]);
      const denial = records[2];
      assert.equal(denial?.subject, 'user:ana', "the denial is about ana's grant");
      assert.equal(denial?.details.reason, 'holdout stays sealed until v8');
      assert.equal(records[3]?.details.reason, 'grant_ended');
    });

    it('lets the requester cancel a pending request', async () => {
      const { body } = await requestEval();
      const receipt = await as<RevocationReceipt>('ana', 'DELETE', `grants/${body.id}`);
      assert.equal(receipt.body.state, 'cancelled');
      const late = await as('pat', 'POST', `grants/${body.id}/approve`, {});
      assert.equal(late.body.code, 'not_pending');
      assert.deepEqual((await trail(body.id)).summary, [
        ['grant.requested', 'user:ana', 'pending'],
        ['grant.cancelled', 'user:ana', 'ok'],
      ]);
    });

    it('times out a request nobody reviewed, and cancels one whose waiting requester went away', async () => {
      const unreviewed = (await requestEval('ana', { heartbeat: false })).body;
      const abandoned = (await requestEval('ana', { heartbeat: true })).body;
      offset += 31_000; // past the 30 s heartbeat timeout, well within the 1 h approval timeout
      await broker.broker.grants.sweep();
      const stateOf = async (id: string) => (await as<GrantView>('ana', 'GET', `grants/${id}`)).body;
      assert.equal((await stateOf(unreviewed.id)).state, 'pending');
      assert.deepEqual(
        [(await stateOf(abandoned.id)).state, (await stateOf(abandoned.id)).endReason],
        ['cancelled', 'requester stopped waiting'],
      );
      offset += HOUR;
      await broker.broker.grants.sweep();
      assert.deepEqual([(await stateOf(unreviewed.id)).state, (await stateOf(unreviewed.id)).endReason], ['timed-out', 'approval timeout']);
      const late = await as('pat', 'POST', `grants/${unreviewed.id}/approve`, {});
      assert.equal(late.body.code, 'not_pending');
      // Both ends are the broker's own doing: actor system, with the reason.
      const abandonedTrail = await trail(abandoned.id);
      assert.deepEqual(abandonedTrail.summary, [
        ['grant.requested', 'user:ana', 'pending'],
        ['grant.cancelled', 'system', 'ok'],
      ]);
      assert.equal(abandonedTrail.records[1]?.details.reason, 'requester stopped waiting');
      const timedOut = await trail(unreviewed.id);
      assert.deepEqual(timedOut.summary, [
        ['grant.requested', 'user:ana', 'pending'],
        ['grant.timed-out', 'system', 'ok'],
      ]);
      assert.equal(timedOut.records[1]?.details.reason, 'approval timeout');
      assert.equal(timedOut.records[1]?.subject, 'user:ana');
    });

    it('renews a live grant in place, up to its max TTL from activation and no further', async () => {
      const issued = (await as<IssuedGrant>('ana', 'POST', 'grants', { scopes: ['datasets/train/shard-0000.jsonl'], heartbeat: false }))
        .body;
      assert.equal(issued.state, 'active');
      const activatedAt = Date.parse(issued.activatedAt ?? '');
      offset += 50 * 60_000;
      const renewed = await as<GrantView>('ana', 'POST', `grants/${issued.id}/renew`, {});
      assert.equal(renewed.status, 200);
      const extended = Date.parse(renewed.body.expiresAt ?? '') - (Date.now() + offset);
      assert.ok(Math.abs(extended - HOUR) < 5000, `renewed to about an hour from now, got ${extended} ms`);
      offset += 55 * 60_000;
      const capped = await as<GrantView>('ana', 'POST', `grants/${issued.id}/renew`, { ttlSeconds: 3600 });
      assert.equal(capped.body.expiresAt, new Date(activatedAt + 2 * HOUR).toISOString(), 'never past maxTtl (2h) from activation');
      const refused = await as('ana', 'POST', `grants/${issued.id}/renew`, {});
      assert.equal(refused.status, 409);
      assert.equal(refused.body.code, 'renewal_capped');
      const tooLong = await as('ana', 'POST', `grants/${issued.id}/renew`, { ttlSeconds: 3 * 3600 });
      assert.equal(tooLong.status, 400);
      assert.equal(tooLong.body.code, 'ttl_too_long');
      assert.equal((await readGranted(broker.url, issued.credential, 'datasets/train/shard-0000.jsonl')).status, 200, 'same credential');
      const other = await as('olga', 'POST', `grants/${issued.id}/renew`, {});
      assert.equal(other.status, 404, "someone else's grant");
    });

    it('activates a request exactly once when its last approvals arrive together', async () => {
      const { body } = await requestEval();
      const results = await Promise.all([
        as<GrantView>('pat', 'POST', `grants/${body.id}/approve`, {}),
        as<GrantView>('quinn', 'POST', `grants/${body.id}/approve`, {}),
      ]);
      for (const result of results) assert.equal(result.status, 200);
      const events = await broker.broker.grants.events(body.id);
      assert.equal(events.filter((event) => event.type === 'grant.activated').length, 1);
      assert.equal((await as<GrantView>('ana', 'GET', `grants/${body.id}`)).body.state, 'active');
    });
  });
}
