import assert from 'node:assert/strict';
import { readFile, symlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { GrantView, IssuedGrant, RevocationReceipt } from '../../src/core/grant.ts';
import { api, readGranted, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { waitFor } from '../helpers/state.ts';

/** A GET whose path goes out exactly as written: fetch() would normalise ".." and "%2e%2e" away. */
function rawGet(base: string, rawPath: string, credential: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const { hostname, port } = new URL(base);
    const request = http.get({ hostname, port, path: rawPath, headers: { authorization: `Bearer ${credential}` } }, (response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => {
        text += chunk.toString();
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, text }));
    });
    request.on('error', reject);
  });
}

/** An RFC 9457 problem-details error body (docs/api.md#errors). */
type ErrorBody = { type: string; status: number; code: string; detail: string; hint?: string; requestId: string };

describe('broker API', () => {
  let broker: TestBroker;
  const grant = async (body: unknown) => api<IssuedGrant & ErrorBody>(broker, broker.token, 'POST', 'grants', body);

  before(async () => {
    broker = await startTestBroker({ heartbeatTimeout: '2s' });
  });
  after(() => broker.cleanup());

  it('answers health without a token and refuses control calls without a valid one', async () => {
    const health = await fetch(`${broker.url}/v1/health`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { status: string }).status, 'ok');
    const anonymous = await api<ErrorBody>(broker, '', 'GET', 'grants');
    assert.equal(anonymous.status, 401);
    assert.equal(anonymous.body.code, 'unauthenticated');
    assert.equal((await api(broker, 'jit_not-a-real-token', 'GET', 'whoami')).status, 401);
    const whoami = await api<{ subject: string; roles: string[]; tokenId: string }>(broker, broker.token, 'GET', 'whoami');
    assert.deepEqual(whoami.body, { subject: 'user:admin', roles: ['admin'], tokenId: whoami.body.tokenId });
    assert.match(whoami.body.tokenId, /^tok_[0-9a-f]{20}$/);
  });

  it('keeps API tokens and grant credentials only as hashes', async () => {
    const issued = await grant({ scopes: ['datasets/train'] });
    assert.equal(issued.status, 201);
    const database = await readFile(path.join(broker.dir, 'broker.db'));
    const wal = await readFile(path.join(broker.dir, 'broker.db-wal')).catch(() => Buffer.alloc(0));
    for (const secret of [broker.token, issued.body.credential]) {
      assert.ok(!database.includes(secret) && !wal.includes(secret), 'a secret was stored in plain');
    }
    await api(broker, broker.token, 'DELETE', `grants/${issued.body.id}`);
  });

  it('issues a grant with a credential, the job environment and the policy default TTL', async () => {
    const issued = await grant({ scopes: ['datasets/train'], reason: 'fine-tune v7' });
    assert.equal(issued.status, 201);
    const body = issued.body;
    assert.match(body.id, /^g_[0-9a-f]{20}$/);
    assert.equal(body.state, 'active');
    assert.deepEqual(body.scopes, ['datasets/train']);
    assert.equal(body.reason, 'fine-tune v7');
    assert.equal(body.env.JIT_FILES_URL, `${broker.url}/v1/files`);
    assert.equal(body.env.JIT_FILES_TOKEN, body.credential);
    const ttl = Date.parse(body.expiresAt ?? '') - Date.parse(body.createdAt);
    assert.equal(ttl, 3600 * 1000);
    const fetched = await api<GrantView>(broker, broker.token, 'GET', `grants/${body.id}`);
    assert.equal(fetched.body.state, 'active');
    assert.equal((fetched.body as Record<string, unknown>).credential, undefined, 'the credential is shown only once');
    const listed = await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants');
    assert.ok(listed.body.grants.some((item) => item.id === body.id));
    await api(broker, broker.token, 'DELETE', `grants/${body.id}`);
  });

  const refused: [string, unknown, number, string, RegExp?][] = [
    ['no scopes', {}, 400, 'invalid_request'],
    ['an unexpected field', { scopes: ['datasets/train'], admin: true }, 400, 'invalid_request'],
    ['a TTL that is not a number of seconds', { scopes: ['datasets/train'], ttlSeconds: '30m' }, 400, 'invalid_request'],
    ['an unknown resource', { scopes: ['dataset/train'] }, 400, 'unknown_resource', /did you mean "datasets"/],
    ['a malformed scope', { scopes: ['datasets/../eval'] }, 400, 'invalid_scope', /did you mean "datasets\/eval"/],
    ['an action files do not have', { scopes: ['datasets/train:execute'] }, 400, 'unknown_action', /use one of: read, write, delete/],
    ['a TTL over the policy maximum', { scopes: ['datasets/train'], ttlSeconds: 9 * 3600 }, 400, 'ttl_too_long', /--ttl 8h or less/],
  ];
  for (const [what, body, status, code, hint] of refused) {
    it(`refuses a request with ${what} (${status} ${code}) and creates nothing`, async () => {
      const before = await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants');
      const response = await grant(body);
      assert.equal(response.status, status);
      assert.equal(response.body.code, code);
      if (hint) assert.match(response.body.hint ?? '', hint);
      const afterwards = await api<{ grants: GrantView[] }>(broker, broker.token, 'GET', 'grants');
      assert.equal(afterwards.body.grants.length, before.body.grants.length);
    });
  }

  it('answers 404 for a grant that does not exist and 400 for a malformed id', async () => {
    assert.equal((await api(broker, broker.token, 'GET', 'grants/g_00000000000000000000')).status, 404);
    assert.equal((await api(broker, broker.token, 'GET', 'grants/nope')).status, 400);
  });

  it('revokes with a receipt, idempotently, and the credential stops working at once', async () => {
    const { body } = await grant({ scopes: ['datasets/train'] });
    assert.equal((await readGranted(broker.url, body.credential, 'datasets/train/shard-0000.jsonl')).status, 200);
    const first = await api<RevocationReceipt>(broker, broker.token, 'DELETE', `grants/${body.id}`);
    assert.equal(first.status, 200);
    assert.equal(first.body.state, 'revoked');
    assert.equal(first.body.alreadyEnded, false);
    assert.ok(first.body.revokedAt);
    const second = await api<RevocationReceipt>(broker, broker.token, 'DELETE', `grants/${body.id}`);
    assert.equal(second.body.alreadyEnded, true);
    assert.equal((await readGranted(broker.url, body.credential, 'datasets/train/shard-0000.jsonl')).status, 401);
    const heartbeat = await api<ErrorBody>(broker, broker.token, 'POST', `grants/${body.id}/heartbeat`);
    assert.equal(heartbeat.status, 409);
    assert.equal(heartbeat.body.code, 'grant_ended');
  });

  it('lapses a grant whose heartbeats stop, and keeps one alive that heartbeats', async () => {
    const kept = (await grant({ scopes: ['datasets/train'] })).body;
    const dropped = (await grant({ scopes: ['datasets/train'] })).body;
    const beats = setInterval(() => void api(broker, broker.token, 'POST', `grants/${kept.id}/heartbeat`), 500);
    try {
      const expired = await waitFor('the silent grant to expire', async () => {
        const { body } = await api<GrantView>(broker, broker.token, 'GET', `grants/${dropped.id}`);
        return body.state === 'expired' ? body : undefined;
      });
      assert.equal(expired.endReason, 'heartbeat');
      assert.equal((await readGranted(broker.url, dropped.credential, 'datasets/train/shard-0000.jsonl')).status, 401);
      assert.equal((await readGranted(broker.url, kept.credential, 'datasets/train/shard-0000.jsonl')).status, 200);
    } finally {
      clearInterval(beats);
      await api(broker, broker.token, 'DELETE', `grants/${kept.id}`);
    }
  });

  it('expires a grant at its TTL, whatever the heartbeats say', async () => {
    const { body } = await grant({ scopes: ['datasets/train'], ttlSeconds: 1 });
    await api(broker, broker.token, 'POST', `grants/${body.id}/heartbeat`);
    const expired = await waitFor('the grant to reach its TTL', async () => {
      const { body: view } = await api<GrantView>(broker, broker.token, 'GET', `grants/${body.id}`);
      return view.state === 'expired' ? view : undefined;
    });
    assert.equal(expired.endReason, 'ttl');
    assert.equal((await readGranted(broker.url, body.credential, 'datasets/train/shard-0000.jsonl')).status, 401);
  });
});

describe('files endpoint', () => {
  let broker: TestBroker;
  let credential: string;

  before(async () => {
    broker = await startTestBroker();
    await writeFile(path.join(broker.dir, 'outside.txt'), 'broker secrets');
    await symlink(path.join(broker.dir, 'outside.txt'), path.join(broker.dataDir, 'train', 'escape.txt'));
    await symlink('../eval/holdout.jsonl', path.join(broker.dataDir, 'train', 'sibling.jsonl'));
    await symlink('shard-0001.jsonl', path.join(broker.dataDir, 'train', 'alias.jsonl'));
    const issued = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes: ['datasets/train'] });
    credential = issued.body.credential;
  });
  after(() => broker.cleanup());

  it('serves files under the granted prefix, byte for byte, and lists directories', async () => {
    const file = await readGranted(broker.url, credential, 'datasets/train/shard-0000.jsonl');
    assert.equal(file.status, 200);
    assert.equal(file.text, await readFile(path.join(broker.dataDir, 'train', 'shard-0000.jsonl'), 'utf8'));
    const listing = await readGranted(broker.url, credential, 'datasets/train');
    const names = (JSON.parse(listing.text) as { entries: { name: string }[] }).entries.map((entry) => entry.name);
    assert.deepEqual(names, ['alias.jsonl', 'escape.txt', 'shard-0000.jsonl', 'shard-0001.jsonl', 'sibling.jsonl']);
    assert.equal((await readGranted(broker.url, credential, 'datasets/train/alias.jsonl')).status, 200, 'a link inside the scope is fine');
  });

  const refused: [string, string, number, string][] = [
    ['a sibling outside the scope', 'datasets/eval/holdout.jsonl', 403, 'outside_scope'],
    ['the resource root above the scope', 'datasets', 403, 'outside_scope'],
    ['a prefix look-alike', 'datasets/training/x', 403, 'outside_scope'],
    ['.. in the path', 'datasets/train/../eval/holdout.jsonl', 403, 'path_traversal'],
    ['encoded ..', 'datasets/train/%2e%2e/eval/holdout.jsonl', 403, 'path_traversal'],
    ['an encoded slash', 'datasets/train%2f..%2feval/holdout.jsonl', 403, 'path_traversal'],
    ['an encoded backslash', 'datasets/train/..%5c..%5coutside.txt', 403, 'path_traversal'],
    ['a symlink out of the root', 'datasets/train/escape.txt', 403, 'outside_scope'],
    ['a symlink into an ungranted sibling', 'datasets/train/sibling.jsonl', 403, 'outside_scope'],
    ['a file that does not exist', 'datasets/train/missing.jsonl', 404, 'not_found'],
    ['a resource that does not exist', 'warehouse/x', 400, 'unknown_resource'],
  ];
  for (const [what, target, status, code] of refused) {
    it(`refuses ${what} (${status} ${code})`, async () => {
      const response = await rawGet(broker.url, `/v1/files/${target}`, credential);
      assert.equal(response.status, status);
      assert.equal((JSON.parse(response.text) as ErrorBody).code, code);
      assert.doesNotMatch(response.text, /broker secrets|do not leak/);
    });
  }

  it('refuses requests without a valid grant credential', async () => {
    assert.equal((await readGranted(broker.url, 'jitc_forged', 'datasets/train/shard-0000.jsonl')).status, 401);
    assert.equal(
      (await readGranted(broker.url, broker.token, 'datasets/train/shard-0000.jsonl')).status,
      401,
      'an API token is not a data credential',
    );
  });
});

describe('revocation on the data plane', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker({ files: { 'train/big.bin': 'x'.repeat(32 << 20) } });
  });
  after(() => broker.cleanup());

  it('cuts a transfer already under way when the grant is revoked', async () => {
    const { body: grant } = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes: ['datasets/train'] });
    const { hostname, port } = new URL(broker.url);
    const received = await new Promise<{ bytes: number; complete: boolean }>((resolve, reject) => {
      const request = http.get(
        { hostname, port, path: '/v1/files/datasets/train/big.bin', headers: { authorization: `Bearer ${grant.credential}` } },
        (response) => {
          let bytes = 0;
          let revoked = false;
          response.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
            if (revoked) return;
            revoked = true;
            response.pause();
            void api(broker, broker.token, 'DELETE', `grants/${grant.id}`).then(() => setTimeout(() => response.resume(), 200));
          });
          response.on('end', () => resolve({ bytes, complete: response.complete }));
          response.on('error', () => resolve({ bytes, complete: false }));
          response.on('aborted', () => resolve({ bytes, complete: false }));
        },
      );
      request.on('error', reject);
    });
    assert.equal(received.complete, false, 'the transfer was cut');
    assert.ok(received.bytes < 32 << 20, `${received.bytes} bytes arrived of ${32 << 20}`);
  });
});

describe('failed authentication', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker();
  });
  after(() => broker.cleanup());

  it('is rate-limited per source: after 20 failures in a minute, 429 with retry-after', async () => {
    for (let attempt = 0; attempt < 20; attempt++) assert.equal((await api(broker, 'jit_guess', 'GET', 'whoami')).status, 401);
    const limited = await fetch(`${broker.url}/v1/whoami`, { headers: { authorization: 'Bearer jit_guess' } });
    assert.equal(limited.status, 429);
    assert.match(limited.headers.get('retry-after') ?? '', /^\d+$/);
    assert.equal(((await limited.json()) as ErrorBody).code, 'rate_limited');
    assert.equal(
      (await readGranted(broker.url, 'jitc_guess', 'datasets/train/shard-0000.jsonl')).status,
      429,
      'the data plane shares the budget',
    );
  });

  it("does not count a known grant's credential refused because the grant ended: its holder retrying is no guess", async () => {
    const other = await startTestBroker();
    try {
      const issued = (await api<IssuedGrant>(other, other.token, 'POST', 'grants', { scopes: ['datasets/train'] })).body;
      await api(other, other.token, 'DELETE', `grants/${issued.id}`);
      for (let attempt = 0; attempt < 30; attempt++) {
        assert.equal((await readGranted(other.url, issued.credential, 'datasets/train/shard-0000.jsonl')).status, 401);
      }
      assert.equal((await api(other, other.token, 'GET', 'whoami')).status, 200, 'the address is not locked out');
    } finally {
      await other.cleanup();
    }
  });

  it('counts failures per client behind a trusted proxy (X-Forwarded-For), not per proxy', async () => {
    const proxied = await startTestBroker({ trustedProxies: ['127.0.0.1'] });
    try {
      const from = (client: string, token: string) =>
        fetch(`${proxied.url}/v1/whoami`, { headers: { authorization: `Bearer ${token}`, 'x-forwarded-for': client } });
      for (let attempt = 0; attempt < 20; attempt++) assert.equal((await from('203.0.113.7', 'jit_guess')).status, 401);
      assert.equal((await from('203.0.113.7', 'jit_guess')).status, 429, 'the guessing client is limited');
      assert.equal((await from('198.51.100.2', proxied.token)).status, 200, 'another client through the same proxy is not');
    } finally {
      await proxied.cleanup();
    }
  });
});
