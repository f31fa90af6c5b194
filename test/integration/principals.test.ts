import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type RunningBroker, startBroker } from '../../src/broker/broker.ts';
import { SqliteStore } from '../../src/broker/store/sqlite.ts';
import type { GrantView, IssuedGrant, RevocationReceipt } from '../../src/core/grant.ts';
import type { CreatedToken, TokenRevocation, TokenView } from '../../src/core/token.ts';
import { api, createToken, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { postgresSkipReason } from '../helpers/postgres.ts';

/** An RFC 9457 problem-details error body (docs/api.md#errors). */
type ErrorBody = { type: string; status: number; code: string; detail: string; hint?: string; requestId: string };
const code = (response: { body: unknown }) => (response.body as ErrorBody).code;

/** Lets `subjects` request datasets/** too (init's policy allows only its admin): roles, not policy, are what these tests gate. */
async function allowSubjects(broker: TestBroker, subjects: string[]): Promise<void> {
  const file = path.join(broker.dir, 'broker.yaml');
  const yaml = await readFile(file, 'utf8');
  const widened = yaml.replace('subjects: ["user:admin"]', `subjects: ${JSON.stringify(['user:admin', ...subjects])}`);
  assert.notEqual(widened, yaml, 'the admin-datasets rule moved');
  await writeFile(file, widened);
  await broker.stop();
  await broker.restart();
}

const SUBJECTS = ['user:ada', 'user:bob', 'user:aud', 'user:olga'];

/** Every role's allowed and forbidden calls, against a real broker (docs/principals.md). */
describe('principals: roles on every endpoint', () => {
  let broker: TestBroker;
  let ada: string; // requester
  let bob: string; // requester
  let auditor: string;
  let approver: string;
  let adaGrant: IssuedGrant;

  before(async () => {
    broker = await startTestBroker();
    await allowSubjects(broker, SUBJECTS);
    ada = await createToken(broker, 'user:ada', ['requester'], 'ada laptop');
    bob = await createToken(broker, 'user:bob', ['requester']);
    auditor = await createToken(broker, 'user:aud', ['auditor']);
    approver = await createToken(broker, 'user:olga', ['approver']);
    const issued = await api<IssuedGrant>(broker, ada, 'POST', 'grants', { scopes: ['datasets/train'] });
    assert.equal(issued.status, 201);
    adaGrant = issued.body;
  });
  after(() => broker.cleanup());

  it('whoami names the subject, roles and token id of any role', async () => {
    const me = await api<{ subject: string; roles: string[]; tokenId: string }>(broker, approver, 'GET', 'whoami');
    assert.equal(me.status, 200);
    assert.equal(me.body.subject, 'user:olga');
    assert.deepEqual(me.body.roles, ['approver']);
    assert.match(me.body.tokenId, /^tok_[0-9a-f]{20}$/);
    const admin = await api<{ roles: string[] }>(broker, broker.token, 'GET', 'whoami');
    assert.deepEqual(admin.body.roles, ['admin'], 'jit broker init mints an admin token');
  });

  it("a requester works on its own grants; another's is not found", async () => {
    assert.equal((await api(broker, ada, 'GET', `grants/${adaGrant.id}`)).status, 200);
    assert.equal((await api(broker, ada, 'POST', `grants/${adaGrant.id}/heartbeat`)).status, 200);
    const list = await api<{ grants: GrantView[] }>(broker, bob, 'GET', 'grants');
    assert.deepEqual(list.body.grants, [], "bob's list holds none of ada's grants");
    for (const [method, route] of [
      ['GET', `grants/${adaGrant.id}`],
      ['POST', `grants/${adaGrant.id}/heartbeat`],
      ['DELETE', `grants/${adaGrant.id}`],
    ] as const) {
      const refused = await api(broker, bob, method, route);
      assert.equal(refused.status, 404, `${method} ${route} as bob`);
      assert.equal(code(refused), 'not_found');
    }
    const all = await api(broker, bob, 'GET', 'grants?all=true');
    assert.equal(all.status, 403);
    assert.equal(code(all), 'forbidden');
    assert.match((all.body as ErrorBody).hint ?? '', /--role auditor/);
  });

  it('an auditor reads every grant but cannot request, heartbeat or revoke', async () => {
    const one = await api<GrantView>(broker, auditor, 'GET', `grants/${adaGrant.id}`);
    assert.equal(one.status, 200);
    assert.equal(one.body.subject, 'user:ada');
    const all = await api<{ grants: GrantView[] }>(broker, auditor, 'GET', 'grants?all=true');
    assert.ok(all.body.grants.some((grant) => grant.id === adaGrant.id));
    for (const [method, route, body] of [
      ['POST', 'grants', { scopes: ['datasets/train'] }],
      ['POST', `grants/${adaGrant.id}/heartbeat`, undefined],
      ['DELETE', `grants/${adaGrant.id}`, undefined],
      ['GET', 'tokens', undefined],
    ] as const) {
      const refused = await api(broker, auditor, method, route, body);
      assert.equal(refused.status, 403, `${method} ${route} as an auditor`);
      assert.equal(code(refused), 'forbidden');
    }
    assert.equal((await api<GrantView>(broker, ada, 'GET', `grants/${adaGrant.id}`)).body.state, 'active', 'still active');
  });

  it('an approver without the requester role cannot request a grant, and nothing is issued', async () => {
    const refused = await api<ErrorBody>(broker, approver, 'POST', 'grants', { scopes: ['datasets/train'] });
    assert.equal(refused.status, 403);
    assert.equal(refused.body.code, 'forbidden');
    assert.match(refused.body.detail, /user:olga's token has no requester role/);
    const all = await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants?all=true');
    assert.ok(!all.body.grants.some((grant) => grant.subject === 'user:olga'));
  });

  it("an admin revokes anyone's grant, in its own name", async () => {
    const bobGrant = (await api<IssuedGrant>(broker, bob, 'POST', 'grants', { scopes: ['datasets/train'] })).body;
    const receipt = await api<RevocationReceipt>(broker, broker.token, 'DELETE', `grants/${bobGrant.id}`);
    assert.equal(receipt.status, 200);
    assert.equal(receipt.body.state, 'revoked');
    const seen = await api<GrantView>(broker, bob, 'GET', `grants/${bobGrant.id}`);
    assert.equal(seen.body.endReason, 'revoked by user:admin');
  });

  it('only an admin manages tokens; lists never show a token or its hash', async () => {
    for (const token of [ada, auditor, approver]) {
      assert.equal((await api(broker, token, 'POST', 'tokens', { subject: 'user:eve', roles: ['admin'] })).status, 403);
      assert.equal((await api(broker, token, 'GET', 'tokens')).status, 403);
    }
    const created = await api<CreatedToken>(broker, broker.token, 'POST', 'tokens', {
      subject: 'user:cy',
      roles: ['approver', 'requester'],
      label: 'ci bot',
    });
    assert.equal(created.status, 201);
    assert.match(created.body.token, /^jit_/);
    assert.deepEqual(created.body.roles, ['requester', 'approver'], 'roles in canonical order');
    assert.equal(created.body.createdBy, 'user:admin');
    assert.equal((await api<{ subject: string }>(broker, created.body.token, 'GET', 'whoami')).body.subject, 'user:cy');

    const listed = await api<{ tokens: TokenView[] }>(broker, broker.token, 'GET', 'tokens');
    assert.equal(listed.status, 200);
    const text = JSON.stringify(listed.body);
    for (const secret of [created.body.token, ada, broker.token]) assert.ok(!text.includes(secret), 'a token in the list');
    assert.doesNotMatch(text, /[0-9a-f]{64}/, 'a hash in the list');
    assert.doesNotMatch(text, /tokenHash|token_hash/);
    const cy = listed.body.tokens.find((token) => token.tokenId === created.body.tokenId);
    const { token: _shownOnce, ...view } = created.body;
    assert.deepEqual(cy, view);
    assert.deepEqual(listed.body.tokens.map((token) => token.subject).sort(), [
      'user:ada',
      'user:admin',
      'user:aud',
      'user:bob',
      'user:cy',
      'user:olga',
    ]);
  });

  it('a revoked token gets 401 at its very next call; revoking again changes nothing', async () => {
    const doomed = await api<CreatedToken>(broker, broker.token, 'POST', 'tokens', { subject: 'user:dan', roles: ['requester'] });
    assert.equal((await api(broker, doomed.body.token, 'GET', 'whoami')).status, 200);
    const revoked = await api<TokenRevocation>(broker, broker.token, 'DELETE', `tokens/${doomed.body.tokenId}`);
    assert.equal(revoked.status, 200);
    assert.equal(revoked.body.alreadyRevoked, false);
    assert.equal(revoked.body.subject, 'user:dan');
    const refused = await api(broker, doomed.body.token, 'GET', 'whoami');
    assert.equal(refused.status, 401);
    assert.equal(code(refused), 'unauthenticated');
    const again = await api<TokenRevocation>(broker, broker.token, 'DELETE', `tokens/${doomed.body.tokenId}`);
    assert.equal(again.status, 200);
    assert.equal(again.body.alreadyRevoked, true);
    assert.equal(again.body.revokedAt, revoked.body.revokedAt);
    const listed = await api<{ tokens: TokenView[] }>(broker, broker.token, 'GET', 'tokens');
    assert.equal(listed.body.tokens.find((token) => token.tokenId === doomed.body.tokenId)?.revokedAt, revoked.body.revokedAt);
    const unknown = await api(broker, broker.token, 'DELETE', 'tokens/tok_00000000000000000000');
    assert.equal(unknown.status, 404);
  });

  it('refuses bad token requests with a reason, and creates nothing', async () => {
    const before = (await api<{ tokens: TokenView[] }>(broker, broker.token, 'GET', 'tokens')).body.tokens.length;
    for (const [body, pattern] of [
      [{ subject: 'bob', roles: ['requester'] }, /invalid subject "bob"/],
      [{ subject: 'group:ml', roles: ['requester'] }, /invalid subject "group:ml"/],
      [{ subject: 'user:bob', roles: [] }, /roles/],
      [{ subject: 'user:bob', roles: ['root'] }, /roles/],
      [{ subject: 'user:bob' }, /roles/],
      [{ subject: 'user:bob', roles: ['requester'], label: 'a\nb' }, /label/],
    ] as const) {
      const refused = await api<ErrorBody>(broker, broker.token, 'POST', 'tokens', body);
      assert.equal(refused.status, 400, JSON.stringify(body));
      assert.match(refused.body.detail, pattern);
    }
    const after = (await api<{ tokens: TokenView[] }>(broker, broker.token, 'GET', 'tokens')).body.tokens.length;
    assert.equal(after, before);
  });

  it('audits token.created and token.revoked without the token', async () => {
    const created = await api<CreatedToken>(broker, broker.token, 'POST', 'tokens', { subject: 'user:fay', roles: ['auditor'] });
    await api(broker, broker.token, 'DELETE', `tokens/${created.body.tokenId}`);
    const store = new SqliteStore(path.join(broker.dir, 'broker.db'));
    const events = (await store.listEvents({})).filter((event) => event.subject === 'user:fay');
    await store.close();
    assert.deepEqual(
      events.map((event) => [event.type, event.detail.tokenId, event.detail.by]),
      [
        ['token.created', created.body.tokenId, 'user:admin'],
        ['token.revoked', created.body.tokenId, 'user:admin'],
      ],
    );
    assert.ok(!JSON.stringify(events).includes(created.body.token));
  });
});

describe('principals on PostgreSQL replicas', { skip: await postgresSkipReason() }, () => {
  let a: TestBroker;
  let b: RunningBroker;
  before(async () => {
    a = await startTestBroker({ store: 'postgres' });
    await allowSubjects(a, SUBJECTS);
    b = await startBroker({ dir: a.dir, host: '127.0.0.1', port: 0 });
  });
  after(async () => {
    await b?.close();
    await a?.cleanup();
  });

  it('a token minted through one replica works on the other, and revoked through it fails there at once', async () => {
    const created = await api<CreatedToken>(a, a.token, 'POST', 'tokens', { subject: 'user:ada', roles: ['requester'] });
    assert.equal(created.status, 201);
    assert.equal((await api(b, created.body.token, 'POST', 'grants', { scopes: ['datasets/train'] })).status, 201);
    assert.equal((await api(a, a.token, 'DELETE', `tokens/${created.body.tokenId}`)).status, 200);
    assert.equal((await api(b, created.body.token, 'GET', 'whoami')).status, 401, 'replica b refuses it on the next call');
    const auditorToken = await createToken(a, 'user:aud', ['auditor']);
    assert.equal((await api(b, auditorToken, 'POST', 'grants', { scopes: ['datasets/train'] })).status, 403);
  });
});
