import assert from 'node:assert/strict';
import { createHmac, createPublicKey } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SqliteStore } from '../../src/broker/store/sqlite.ts';
import type { AuditEvent } from '../../src/broker/store/store.ts';
import { createToken, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startTestIssuer, type TestIssuer } from '../helpers/oidc-issuer.ts';

/**
 * OIDC federation (issue 9) against a real broker and a local issuer this test starts (its own
 * keys, discovery document and JWKS endpoint). Every refused token must leave an
 * `auth.oidc_rejected` record with its reason, and no token may reach the audit trail.
 */
const AUDIENCE = 'https://jit.test';
const SUBJECT = 'ci:github:acme/train-pipeline@refs/heads/main';

describe('OIDC exchange', () => {
  let issuer: TestIssuer;
  let airgap: TestIssuer;
  let gitlab: TestIssuer;
  let ghDefault: TestIssuer;
  let glDefault: TestIssuer;
  let flaky: TestIssuer;
  let broker: TestBroker;
  let skew = 0;
  const secrets: string[] = [];

  before(async () => {
    issuer = await startTestIssuer({ audience: AUDIENCE });
    airgap = await startTestIssuer({ audience: AUDIENCE });
    gitlab = await startTestIssuer({ audience: AUDIENCE });
    ghDefault = await startTestIssuer({ audience: AUDIENCE });
    glDefault = await startTestIssuer({ audience: AUDIENCE });
    flaky = await startTestIssuer({ audience: AUDIENCE });
    broker = await startTestBroker({
      clock: { now: () => Date.now() + skew },
      policy: `policy:
  rules:
    - name: admin-datasets
      subjects: ["user:admin"]
      scopes: ["datasets/**"]
      maxTtl: 8h
    - name: train-pipeline-main
      claims: { iss: "${issuer.url}", repository: "acme/train-pipeline", ref: "refs/heads/main" }
      scopes: ["datasets/train/**"]
      defaultTtl: 1h
      maxTtl: 2h
    - name: acme-ci-eval
      subjects: ["ci:github:acme/**"]
      claims: { iss: "${issuer.url}", environment: "eval" }
      scopes: ["datasets/eval/**"]
      maxTtl: 30m
    - name: airgap-pipelines-train
      claims: { iss: "${airgap.url}", sub: "pipeline-*" }
      scopes: ["datasets/train/**"]
      defaultTtl: 1h
      maxTtl: 2h
    - name: default-subject-main
      subjects: ["ci:gh:repo:acme/train-pipeline:ref:refs/heads/main"]
      scopes: ["datasets/eval/**"]
      maxTtl: 30m
    - name: airgap-eval-approved
      subjects: ["ci:airgap:**"]
      scopes: ["datasets/eval/**"]
      maxTtl: 1h
      approval: { required: true, approvers: ["user:pat"], count: 1 }
  deny:
    - name: no-unprotected-refs
      claims: { ref_protected: "false" }
      scopes: ["datasets/**"]
      reason: only protected branches read data
`,
      extraYaml: `oidc:
  issuers:
    - name: github
      issuer: ${issuer.url}
      audience: ${AUDIENCE}
      subject: "ci:github:{repository}@{ref}"
      claims: { repository_owner: "acme" }
      clockSkew: 5s
      sessionTtl: 3h
      keyRefreshCooldown: 1s
    - name: down
      issuer: http://127.0.0.1:9/down
      audience: ${AUDIENCE}
      jwksUri: http://127.0.0.1:9/down/jwks
      subject: "ci:down:{sub}"
    - name: airgap
      issuer: ${airgap.url}
      audience: [${AUDIENCE}, "https://other.test"]
      jwks: ${JSON.stringify(airgap.jwks())}
      subject: "ci:airgap:{sub}"
      sessionTtl: 30m
    - name: gitlab
      issuer: ${gitlab.url}
      audience: ${AUDIENCE}
      jwks: ${JSON.stringify(gitlab.jwks())}
      subject: "ci:gitlab:{project_path}@{ref}"
    - name: gh
      issuer: ${ghDefault.url}
      audience: ${AUDIENCE}
      jwks: ${JSON.stringify(ghDefault.jwks())}
    - name: gl
      issuer: ${glDefault.url}
      audience: ${AUDIENCE}
      jwks: ${JSON.stringify(glDefault.jwks())}
    - name: flaky
      issuer: ${flaky.url}
      audience: ${AUDIENCE}
      keyRefreshCooldown: 1s
`,
    });
  });
  after(async () => {
    await broker?.cleanup();
    await issuer?.close();
    await airgap?.close();
    await gitlab?.close();
    await ghDefault?.close();
    await glDefault?.close();
    await flaky?.close();
  });

  const exchange = async (token: string) => {
    secrets.push(token);
    const response = await fetch(`${broker.url}/v1/auth/oidc`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token }),
    });
    const body = (await response.json()) as Record<string, unknown>;
    if (typeof body.session === 'string') secrets.push(body.session);
    return { status: response.status, body };
  };
  const call = async (session: string, method: string, route: string, json?: unknown) => {
    const response = await fetch(`${broker.url}/v1/${route}`, {
      method,
      headers: { authorization: `Bearer ${session}`, ...(json === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(json === undefined ? {} : { body: JSON.stringify(json) }),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };
  const events = async (): Promise<AuditEvent[]> => {
    const store = new SqliteStore(path.join(broker.dir, 'broker.db'));
    try {
      return await store.listEvents({});
    } finally {
      await store.close();
    }
  };
  const lastRejection = async () => (await events()).filter((event) => event.type === 'auth.oidc_rejected').at(-1);

  it("answers 503 oidc_unavailable, uncounted as a failed login, when the issuer's keys cannot be fetched", async () => {
    const { status, body } = await exchange(await issuer.sign({ iss: 'http://127.0.0.1:9/down' }));
    assert.equal(status, 503, JSON.stringify(body));
    assert.equal(body.code, 'oidc_unavailable');
    assert.match(String(body.detail), /^the CI identity token could not be checked: /);
    assert.equal((await lastRejection())?.detail.reason, 'keys_unavailable');
  });

  it('asks an issuer that is down at most once a keyRefreshCooldown (1s here): the other exchanges get the same 503 from memory, and an outage is one audit record', async () => {
    const recorded = async () => (await events()).filter((event) => event.type === 'auth.oidc_rejected' && event.detail.issuer === 'flaky');
    flaky.setDown(true);
    const token = await flaky.sign();
    // More than the 20 failed logins a minute an address may make: none of these counts as one.
    for (let attempt = 0; attempt < 25; attempt++) {
      const { status, body } = await exchange(token);
      assert.equal(status, 503, `attempt ${attempt}: ${JSON.stringify(body)}`);
      assert.equal(body.code, 'oidc_unavailable');
      assert.match(String(body.detail), /could not get issuer flaky's keys \(http:.*openid-configuration answered 503\)/);
    }
    assert.equal(flaky.requests(), 1, 'one fetch of the discovery document, not one per exchange');
    assert.equal((await recorded()).length, 1, 'one record for the outage, not one per exchange');
    assert.equal((await recorded())[0]?.detail.reason, 'keys_unavailable');
    await sleep(1100);
    assert.equal((await exchange(token)).status, 503);
    assert.equal(flaky.requests(), 2, 'asked again once the failure is forgotten');
    assert.equal((await recorded()).length, 1, 'the same outage');

    flaky.setDown(false);
    await sleep(1100);
    const back = await exchange(await flaky.sign());
    assert.equal(back.status, 201, JSON.stringify(back.body));
    // A new outage: the issuer rotated its key and went down before the broker could fetch it.
    await sleep(1100);
    await flaky.rotate();
    flaky.setDown(true);
    const rotated = await exchange(await flaky.sign());
    assert.equal(rotated.status, 503, JSON.stringify(rotated.body));
    assert.match(String(rotated.body.detail), /could not get issuer flaky's keys \(Expected 200 OK/);
    assert.equal((await recorded()).length, 2, 'a second outage, a second record');
    flaky.setDown(false);
  });

  it('makes a subject of real GitHub and GitLab sub claims with the default template, ci:NAME:{sub}', async () => {
    const github = await exchange(await ghDefault.sign({ sub: 'repo:acme/train-pipeline:ref:refs/heads/main' }));
    assert.equal(github.status, 201, JSON.stringify(github.body));
    assert.equal(github.body.subject, 'ci:gh:repo:acme/train-pipeline:ref:refs/heads/main');
    const granted = await call(String(github.body.session), 'POST', 'grants', { scopes: ['datasets/eval'] });
    assert.equal(granted.status, 201, `a rule naming that exact subject allows: ${JSON.stringify(granted.body)}`);
    secrets.push(String(granted.body.credential));
    const environment = await exchange(await ghDefault.sign({ sub: 'repo:acme/train-pipeline:environment:production' }));
    assert.equal(environment.body.subject, 'ci:gh:repo:acme/train-pipeline:environment:production');
    const pull = await exchange(await ghDefault.sign({ sub: 'repo:acme/train-pipeline:pull_request' }));
    assert.equal(pull.body.subject, 'ci:gh:repo:acme/train-pipeline:pull_request');

    const gitlabSub = 'project_path:acme/train-pipeline:ref_type:branch:ref:main';
    const gitlabClaims = { sub: gitlabSub, project_path: 'acme/train-pipeline', namespace_path: 'acme', ref: 'main', ref_type: 'branch' };
    const gitlab_ = await exchange(await glDefault.sign(gitlabClaims));
    assert.equal(gitlab_.status, 201, JSON.stringify(gitlab_.body));
    assert.equal(gitlab_.body.subject, `ci:gl:${gitlabSub}`);
    // What the default template still refuses (`@`, globs, spaces) is in test/unit/oidc-policy.test.ts:
    // this broker's failed-login budget is spent on the refusals below.
  });

  it("does not let one issuer's token meet a rule written for another's claims", async () => {
    // The air-gapped CI's token states exactly the claims train-pipeline-main asks of GitHub's.
    const { body } = await exchange(await airgap.sign({ sub: 'intruder', repository: 'acme/train-pipeline', ref: 'refs/heads/main' }));
    assert.equal(body.subject, 'ci:airgap:intruder');
    const refused = await call(String(body.session), 'POST', 'grants', { scopes: ['datasets/train'] });
    assert.equal(refused.status, 403, JSON.stringify(refused.body));
    assert.equal(refused.body.code, 'policy_denied');
    // The same claims from GitHub's issuer are allowed.
    const github = await exchange(await issuer.sign());
    const allowed = await call(String(github.body.session), 'POST', 'grants', { scopes: ['datasets/train'] });
    assert.equal(allowed.status, 201);
    secrets.push(String(allowed.body.credential));
  });

  it('exchanges a valid token for a requester session with the mapped subject, and records the deciding claims', async () => {
    const { status, body } = await exchange(await issuer.sign());
    assert.equal(status, 201, JSON.stringify(body));
    assert.equal(body.subject, SUBJECT);
    assert.equal(body.issuer, 'github');
    assert.deepEqual(body.roles, ['requester']);
    assert.match(String(body.session), /^jits_/);
    const expiresIn = Date.parse(String(body.expiresAt)) - Date.now();
    assert.ok(expiresIn > 3 * 3600_000 - 60_000 && expiresIn <= 3 * 3600_000, 'the session lasts the issuer sessionTtl');
    const whoami = await call(String(body.session), 'GET', 'whoami');
    assert.equal(whoami.body.subject, SUBJECT);
    assert.equal(whoami.body.tokenId, body.sessionId);
    const exchanged = (await events()).filter((event) => event.type === 'auth.oidc_exchanged').at(-1);
    assert.equal(exchanged?.subject, SUBJECT);
    assert.equal(exchanged?.detail.sessionId, body.sessionId);
    assert.equal(exchanged?.detail.issuer, 'github');
    const claims = exchanged?.detail.claims as Record<string, unknown>;
    assert.equal(claims.repository, 'acme/train-pipeline');
    assert.equal(claims.ref, 'refs/heads/main');
    assert.equal(claims.repository_owner, 'acme');
  });

  it('lets the main branch of acme/train-pipeline read datasets/train for up to 2h, as the rule says', async () => {
    const { body } = await exchange(await issuer.sign());
    const session = String(body.session);
    const granted = await call(session, 'POST', 'grants', { scopes: ['datasets/train'], ttlSeconds: 7200 });
    assert.equal(granted.status, 201, JSON.stringify(granted.body));
    assert.equal(granted.body.subject, SUBJECT);
    const decision = (await events()).filter((event) => event.grantId === granted.body.id).at(0)?.detail.decision as {
      explanation: { rule: string }[];
    };
    assert.equal(decision.explanation[0]?.rule, 'train-pipeline-main');
    secrets.push(String(granted.body.credential));
    const tooLong = await call(session, 'POST', 'grants', { scopes: ['datasets/train'], ttlSeconds: 3 * 3600 });
    assert.equal(tooLong.status, 400);
    assert.equal(tooLong.body.code, 'ttl_too_long');
    // The session holds and releases its own grant: heartbeat and revoke work with it.
    assert.equal((await call(session, 'POST', `grants/${granted.body.id}/heartbeat`)).status, 200);
    assert.equal((await call(session, 'DELETE', `grants/${granted.body.id}`)).status, 200);
    // A requester only: no admin routes.
    assert.equal((await call(session, 'GET', 'tokens')).status, 403);
  });

  it('denies what the claims do not allow, and explains which claims missed', async () => {
    const { body } = await exchange(await issuer.sign({ ref: 'refs/heads/feature-x' }));
    assert.equal(body.subject, 'ci:github:acme/train-pipeline@refs/heads/feature-x');
    const refused = await call(String(body.session), 'POST', 'grants', { scopes: ['datasets/train'] });
    assert.equal(refused.status, 403);
    assert.equal(refused.body.code, 'policy_denied');
    const eval_ = await exchange(await issuer.sign({ environment: 'eval' }));
    const evalGrant = await call(String(eval_.body.session), 'POST', 'grants', { scopes: ['datasets/eval'] });
    assert.equal(evalGrant.status, 201, 'a ci: subject glob plus a claim allows');
    secrets.push(String(evalGrant.body.credential));
    const unprotected = await exchange(await issuer.sign({ ref_protected: false }));
    const denied = await call(String(unprotected.body.session), 'POST', 'grants', { scopes: ['datasets/train'] });
    assert.equal(denied.status, 403);
    assert.match(String(denied.body.detail), /deny rule "no-unprotected-refs"/);
  });

  it('refuses a token whose claims the issuer entry does not allow (repository_owner)', async () => {
    const { status, body } = await exchange(await issuer.sign({ repository_owner: 'evil', repository: 'evil/x' }));
    assert.equal(status, 401);
    assert.equal(body.code, 'oidc_rejected');
    assert.equal((await lastRejection())?.detail.reason, 'claims_not_allowed');
  });

  it('refuses a claim value that would forge a subject a ci: glob matches (bad_subject), and keeps real refs', async () => {
    // `ci:gitlab:acme/sandbox@pwn@main` would match `ci:gitlab:acme/*@main` (`*` is anything but `/`),
    // `ci:github:acme/sandbox@x@refs/heads/main` would match `ci:github:acme/**@refs/heads/main`.
    const forged = [
      () => gitlab.sign({ project_path: 'acme/sandbox', ref: 'pwn@main' }),
      () => issuer.sign({ repository: 'acme/sandbox', ref: 'x@refs/heads/main' }),
    ];
    for (const make of forged) {
      const { status, body } = await exchange(await make());
      assert.equal(status, 401, JSON.stringify(body));
      assert.equal(body.code, 'oidc_rejected');
      assert.match(String(body.detail), /claim ref is empty or holds a character a subject may not/);
      const rejection = await lastRejection();
      assert.equal(rejection?.detail.reason, 'bad_subject');
      assert.equal(rejection?.subject, null);
    }
    const main = await exchange(await gitlab.sign({ project_path: 'acme/sandbox', ref: 'main' }));
    assert.equal(main.body.subject, 'ci:gitlab:acme/sandbox@main');
    const tag = await exchange(await issuer.sign({ ref: 'refs/tags/v1.2.3' }));
    assert.equal(tag.body.subject, 'ci:github:acme/train-pipeline@refs/tags/v1.2.3');
  });

  const bad: [string, () => Promise<string>, string, RegExp][] = [
    ['a wrong audience', () => issuer.sign({ aud: 'https://someone-else.test' }), 'wrong_audience', /audience/],
    ['an issuer it does not trust', () => issuer.sign({ iss: 'https://token.evil.test' }), 'unknown_issuer', /does not trust/],
    ['an expired token', () => issuer.sign({ iat: now() - 900, nbf: now() - 900, exp: now() - 600 }), 'expired', /expired at/],
    ['a token not valid yet', () => issuer.sign({ nbf: now() + 600, exp: now() + 900 }), 'not_yet_valid', /not valid before/],
    ['a token issued in the future', () => issuer.sign({ iat: now() + 600, exp: now() + 900 }), 'issued_in_future', /future/],
    ['a token older than maxTokenAge', () => issuer.sign({ iat: now() - 7200, exp: now() + 60 }), 'too_old', /issued more than/],
    ['alg none', async () => unsigned(await issuer.sign()), 'algorithm_not_allowed', /algorithm/],
    ['a tampered payload', async () => tampered(await issuer.sign(), { repository: 'acme/other' }), 'bad_signature', /signature/],
    ['HS256 signed with the public key (algorithm confusion)', () => hmacWithPublicKey(issuer), 'algorithm_not_allowed', /algorithm/],
    ['not a JWT at all', async () => 'not-a-jwt', 'malformed', /not a JWT/],
  ];
  for (const [what, make, reason, message] of bad) {
    it(`refuses ${what} (${reason}), with the reason in the audit trail`, async () => {
      const { status, body } = await exchange(await make());
      assert.equal(status, 401, JSON.stringify(body));
      assert.equal(body.code, 'oidc_rejected');
      assert.match(String(body.detail), message);
      const rejection = await lastRejection();
      assert.equal(rejection?.detail.reason, reason);
      assert.equal(rejection?.subject, null);
    });
  }

  it('refuses an unknown key id after one refresh of the keys, and refreshes no more often than keyRefreshCooldown', async () => {
    await exchange(await issuer.sign()); // keys cached
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const before = issuer.jwksFetches();
    const unpublished = await issuer.rotate({ publish: false });
    const first = await exchange(await issuer.sign());
    assert.equal(first.status, 401);
    assert.equal((await lastRejection())?.detail.reason, 'unknown_key');
    assert.deepEqual((await lastRejection())?.detail.header, { alg: 'RS256', kid: unpublished });
    assert.equal(issuer.jwksFetches(), before + 1, 'an unknown kid refetches the keys once');
    for (let attempt = 0; attempt < 5; attempt++) assert.equal((await exchange(await issuer.sign())).status, 401);
    assert.equal(issuer.jwksFetches(), before + 1, 'not again within the cooldown');
  });

  it('picks up a rotated key: a new kid published by the issuer is fetched on first sight', async () => {
    issuer.publishAll();
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const rotated = await issuer.rotate();
    const { status, body } = await exchange(await issuer.sign());
    assert.equal(status, 201, JSON.stringify(body));
    const exchanged = (await events()).filter((event) => event.type === 'auth.oidc_exchanged').at(-1);
    assert.equal(exchanged?.detail.sessionId, body.sessionId);
    assert.notEqual(rotated, undefined);
  });

  it('verifies with inline keys (air-gapped) without fetching anything, and caps grants at the session end', async () => {
    const { status, body } = await exchange(await airgap.sign({ sub: 'pipeline-7', aud: 'https://other.test' }));
    assert.equal(status, 201, JSON.stringify(body));
    assert.equal(body.subject, 'ci:airgap:pipeline-7');
    assert.equal(airgap.jwksFetches(), 0);
    // airgap-pipelines-train allows up to 2h, but not past the end of this 30m session.
    const session = String(body.session);
    const refused = await call(session, 'POST', 'grants', { scopes: ['datasets/train'], ttlSeconds: 3600 });
    assert.equal(refused.status, 400);
    assert.equal(refused.body.code, 'ttl_too_long');
    assert.match(String(refused.body.detail), /left of ci:airgap:pipeline-7's CI session/);
    const defaulted = await call(session, 'POST', 'grants', { scopes: ['datasets/train'] });
    assert.equal(defaulted.status, 201);
    secrets.push(String(defaulted.body.credential));
    const lifetime = Date.parse(String(defaulted.body.expiresAt)) - Date.now();
    assert.ok(lifetime <= 30 * 60_000 && lifetime > 29 * 60_000, 'the 1h default is cut to the session end');
    skew = 31 * 60_000;
    try {
      const expired = await call(session, 'GET', 'whoami');
      assert.equal(expired.status, 401);
      assert.equal(expired.body.code, 'session_expired');
    } finally {
      skew = 0;
    }
  });

  it("counts an approved grant's TTL from the approval, so it can end after its session, as docs/ci.md says", async () => {
    const { body } = await exchange(await airgap.sign({ sub: 'pipeline-8' }));
    const sessionEnd = Date.parse(String(body.expiresAt));
    const requested = await call(String(body.session), 'POST', 'grants', { scopes: ['datasets/eval'], heartbeat: false });
    assert.equal(requested.status, 202, JSON.stringify(requested.body));
    const ttl = Number(requested.body.ttlSeconds);
    assert.ok(ttl > 1790 && ttl <= 1800, "the rule's 1h cut to the 30m left of the session");
    secrets.push(String(requested.body.credential));
    const approver = await createToken(broker, 'user:pat', ['approver']);
    skew = 20 * 60_000;
    try {
      const approved = await call(approver, 'POST', `grants/${requested.body.id}/approve`, {});
      assert.equal(approved.body.state, 'active', JSON.stringify(approved.body));
      const past = Date.parse(String(approved.body.expiresAt)) - sessionEnd;
      assert.ok(past > 19 * 60_000 && past <= 20 * 60_000 + 5000, `ends ${past} ms after the session: the 20m the approval took`);
    } finally {
      skew = 0;
    }
  });

  it('never writes a token, a session bearer or a grant credential into the audit trail', async () => {
    const trail = JSON.stringify(await events());
    assert.ok(secrets.length > 10);
    for (const secret of secrets) {
      // A JWT's payload part is its claims (which are recorded, some of them); its signature is not.
      const signature = secret.split('.')[2];
      assert.ok(!trail.includes(secret), 'no whole token or bearer');
      if (signature) assert.ok(!trail.includes(signature), 'no JWT signature');
    }
  });
});

/**
 * Anyone can POST /v1/auth/oidc, and each refusal is a permanent audit record: a caller must not
 * be able to make the broker write much, or anything at all when it trusts no issuer.
 */
describe('OIDC refusals cannot flood the audit trail', () => {
  let issuer: TestIssuer;
  let broker: TestBroker;
  let bare: TestBroker;

  before(async () => {
    issuer = await startTestIssuer({ audience: AUDIENCE });
    broker = await startTestBroker({
      extraYaml: `oidc:\n  issuers:\n    - name: github\n      issuer: ${issuer.url}\n      audience: ${AUDIENCE}\n      subject: "ci:github:{repository}@{ref}"\n`,
    });
    bare = await startTestBroker();
  });
  after(async () => {
    await broker?.cleanup();
    await bare?.cleanup();
    await issuer?.close();
  });

  const exchange = async (on: TestBroker, token: string) => {
    const response = await fetch(`${on.url}/v1/auth/oidc`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token }),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };
  const rejections = async (on: TestBroker): Promise<AuditEvent[]> => {
    const store = new SqliteStore(path.join(on.dir, 'broker.db'));
    try {
      return (await store.listEvents({})).filter((event) => event.type.startsWith('auth.oidc'));
    } finally {
      await store.close();
    }
  };

  it('answers 400 oidc_not_configured and writes nothing when broker.yaml trusts no issuer', async () => {
    const before = (await rejections(bare)).length;
    for (const token of [await issuer.sign(), 'not-a-jwt']) {
      const { status, body } = await exchange(bare, token);
      assert.equal(status, 400, JSON.stringify(body));
      assert.equal(body.code, 'oidc_not_configured');
      assert.match(String(body.detail), /trusts no OIDC issuer/);
    }
    assert.equal((await rejections(bare)).length, before);
  });

  it('records a refused token in at most 2 KB: deciding claims only, each cut to 100 characters', async () => {
    const long = (letter: string) => letter.repeat(400);
    const claims: Record<string, string> = { iss: `https://evil.test/${long('i')}`, junk: long('j') };
    for (const name of ['sub', 'repository', 'repository_owner', 'ref', 'workflow', 'job_workflow_ref', 'actor', 'environment']) {
      claims[name] = long(name[0] ?? 'x');
    }
    const header = { alg: 'RS256', kid: long('k') };
    const forged = `${encode(header)}.${encode(claims)}.${'s'.repeat(64)}`;
    const signed = await issuer.sign({ ...claims, iss: issuer.url, aud: 'https://someone-else.test' }, { header: { kid: long('k') } });
    for (const [token, reason] of [
      [forged, 'unknown_issuer'],
      [signed, 'unknown_key'],
    ] as const) {
      const { status } = await exchange(broker, token);
      assert.equal(status, 401);
      const record = (await rejections(broker)).at(-1);
      assert.ok(record);
      assert.equal(record.detail.reason, reason);
      const size = Buffer.byteLength(JSON.stringify(record.detail));
      assert.ok(size <= 2048, `the detail is ${size} bytes`);
      assert.equal((record.detail.header as { kid: string }).kid, 'k'.repeat(100));
      const kept = record.detail.claims as Record<string, unknown>;
      assert.ok(Object.keys(kept).length >= 5, JSON.stringify(kept));
      assert.equal(kept.junk, undefined, 'a claim nothing decides on is not kept');
      for (const value of Object.values(kept)) assert.ok(String(value).length <= 100);
    }
  });

  it('keeps only the length of a token that is not a JWT', async () => {
    const payload = encode({ iss: 'https://evil.test', repository: 'SECRET-REPOSITORY' });
    for (const token of ['SECRET-NOT-A-JWT'.repeat(500), `SECRET-HEADER.${payload}.sig`, `${encode({ alg: 'RS256' })}.${payload}.a.b`]) {
      const { status, body } = await exchange(broker, token);
      assert.equal(status, 401, JSON.stringify(body));
      const record = (await rejections(broker)).at(-1);
      assert.deepEqual(record?.detail, {
        issuer: null,
        reason: 'malformed',
        message: 'the token is not a JWT (header.payload.signature)',
        length: token.length,
      });
    }
    assert.ok(!JSON.stringify(await rejections(broker)).includes('SECRET'));
  });
});

const now = () => Math.floor(Date.now() / 1000);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
const decode = (part: string) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>;

/** The token's claims with `alg: none` and no signature. */
function unsigned(token: string): string {
  const [, payload] = token.split('.');
  return `${encode({ alg: 'none', typ: 'JWT' })}.${payload}.`;
}

/** The token with some claims changed and its original signature. */
function tampered(token: string, claims: Record<string, unknown>): string {
  const [header, payload = '', signature] = token.split('.');
  return `${header}.${encode({ ...decode(payload), ...claims })}.${signature}`;
}

/** The classic confusion attack: HS256 with the issuer's public key (PEM) as the HMAC secret. */
async function hmacWithPublicKey(issuer: TestIssuer): Promise<string> {
  const jwk = issuer.jwks().keys.find((key) => key.kid === issuer.kid);
  const pem = createPublicKey({ key: jwk as never, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
  const [, payload] = (await issuer.sign()).split('.');
  const signingInput = `${encode({ alg: 'HS256', typ: 'JWT', kid: issuer.kid })}.${payload}`;
  return `${signingInput}.${createHmac('sha256', pem).update(signingInput).digest('base64url')}`;
}
