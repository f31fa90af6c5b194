import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { CreatedToken, TokenRevocation, TokenView } from '../../src/core/token.ts';
import { api, createToken, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { jit, testEnv } from '../helpers/cli.ts';

/** `jit broker token create|list|revoke`, spawned as the real bin, through the API and on the store (--dir). */
describe('jit broker token', () => {
  let broker: TestBroker;
  let asAdmin: NodeJS.ProcessEnv;
  before(async () => {
    broker = await startTestBroker();
    asAdmin = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token });
  });
  after(() => broker.cleanup());

  it('creates a token through the API as the admin, prints it once, and it works with exactly its roles', async () => {
    const result = await jit(
      ['broker', 'token', 'create', '--subject', 'user:bob', '--role', 'approver', '--role', 'requester', '--label', 'bob laptop'],
      { env: asAdmin },
    );
    assert.equal(result.code, 0, result.stderr);
    const token = /token: (jit_\S+)/.exec(result.stdout)?.[1] ?? '';
    assert.match(token, /^jit_[A-Za-z0-9_-]{43}$/);
    assert.match(result.stdout, /^Created token tok_[0-9a-f]{20} for user:bob \(requester, approver\)$/m);
    assert.ok(!result.stderr.includes(token), 'the token never goes to stderr');
    const me = await api<{ subject: string; roles: string[]; tokenId: string }>(broker, token, 'GET', 'whoami');
    assert.deepEqual(me.body, { subject: 'user:bob', roles: ['requester', 'approver'], tokenId: me.body.tokenId });
    assert.equal((await api(broker, token, 'GET', 'tokens')).status, 403, 'no admin role');
  });

  it('lists tokens without secrets, and revoke stops a token at once', async () => {
    const created = JSON.parse(
      (await jit(['broker', 'token', 'create', '--subject', 'user:cy', '--role', 'requester', '--json'], { env: asAdmin })).stdout,
    ) as CreatedToken;
    const listed = await jit(['broker', 'token', 'list', '--json'], { env: asAdmin });
    assert.equal(listed.code, 0, listed.stderr);
    assert.ok(!listed.stdout.includes(created.token) && !listed.stdout.includes(broker.token), 'a token in the list');
    assert.doesNotMatch(listed.stdout, /[0-9a-f]{64}/, 'a hash in the list');
    const { tokens } = JSON.parse(listed.stdout) as { tokens: TokenView[] };
    assert.equal(tokens.find((token) => token.tokenId === created.tokenId)?.revokedAt, null);
    const human = await jit(['broker', 'token', 'list'], { env: asAdmin });
    assert.match(human.stdout, /^TOKEN ID\s+SUBJECT\s+ROLES\s+STATE/);
    assert.match(human.stdout, new RegExp(`${created.tokenId}\\s+user:cy\\s+requester\\s+active`));

    const revoked = await jit(['broker', 'token', 'revoke', created.tokenId], { env: asAdmin });
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.match(revoked.stdout, new RegExp(`^${created.tokenId} \\(user:cy\\): revoked at `));
    assert.equal((await api(broker, created.token, 'GET', 'whoami')).status, 401);
    const again = await jit(['broker', 'token', 'revoke', created.tokenId, '--json'], { env: asAdmin });
    assert.equal(again.code, 0);
    assert.equal((JSON.parse(again.stdout) as TokenRevocation).alreadyRevoked, true);
  });

  it('mints an admin token on the broker host with --dir, no token needed', async () => {
    const env = await testEnv();
    const result = await jit(['broker', 'token', 'create', '--dir', broker.dir, '--subject', 'user:ops', '--role', 'admin', '--json'], {
      env,
    });
    assert.equal(result.code, 0, result.stderr);
    const created = JSON.parse(result.stdout) as CreatedToken;
    assert.equal(created.createdBy, 'local:broker-host');
    assert.equal((await api(broker, created.token, 'GET', 'tokens')).status, 200, 'the running broker accepts it at once');
    const listed = JSON.parse((await jit(['broker', 'token', 'list', '--dir', broker.dir, '--json'], { env })).stdout) as {
      tokens: TokenView[];
    };
    assert.ok(listed.tokens.some((token) => token.tokenId === created.tokenId));
    const revoked = await jit(['broker', 'token', 'revoke', '--dir', broker.dir, created.tokenId], { env });
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.equal((await api(broker, created.token, 'GET', 'tokens')).status, 401);
  });

  it('refuses bad input with one line and exit 2, creating nothing; a non-admin gets exit 4', async () => {
    const count = async () => ((await api<{ tokens: TokenView[] }>(broker, broker.token, 'GET', 'tokens')).body.tokens ?? []).length;
    const before = await count();
    for (const [args, pattern] of [
      [['--subject', 'bob', '--role', 'requester'], /invalid subject "bob"; a token subject is user:NAME/],
      [['--subject', 'user:bob', '--role', 'root'], /unknown role "root"; roles are requester, approver, auditor, admin/],
      [['--subject', 'user:bob', '--role', 'requester', '--label', 'x\u0007'], /label/],
    ] as const) {
      const result = await jit(['broker', 'token', 'create', ...args], { env: asAdmin });
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, pattern);
      assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
      assert.equal(result.stdout, '');
    }
    const notAnId = await jit(['broker', 'token', 'revoke', broker.token], { env: asAdmin });
    assert.equal(notAnId.code, 2);
    assert.ok(!notAnId.stderr.includes(broker.token), 'a token pasted by mistake is not echoed');
    assert.match(notAnId.stderr, /is not a token id/);
    assert.equal(await count(), before);

    const requester = await createToken(broker, 'user:dee', ['requester']);
    const env = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: requester });
    const forbidden = await jit(['broker', 'token', 'list'], { env });
    assert.equal(forbidden.code, 4, forbidden.stderr);
    assert.match(forbidden.stderr, /user:dee's token has no admin role/);
  });
});
