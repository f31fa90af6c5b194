// Crash safety: `kill -9` the broker while it is busy issuing and revoking; after a restart every
// acknowledged grant and revocation is there, and nothing is usable past its expiry.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { GrantView, IssuedGrant } from '../../src/core/grant.ts';
import { readGranted } from '../helpers/broker.ts';
import { JitProcess, jit, testEnv } from '../helpers/cli.ts';

type Acknowledged = { issued: IssuedGrant[]; revoked: Set<string>; shortLived: IssuedGrant[] };

async function request<T>(
  url: string,
  token: string,
  method: string,
  route: string,
  body?: unknown,
): Promise<{ status: number; body: T } | undefined> {
  try {
    const response = await fetch(`${url}/v1/${route}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: response.status, body: (await response.json()) as T };
  } catch {
    return undefined; // the broker died mid-request: not acknowledged
  }
}

describe('the broker after kill -9', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  let token: string;
  before(async () => {
    dir = path.join(await mkdtemp(path.join(tmpdir(), 'jit-crash-')), 'broker');
    env = await testEnv();
    token = (JSON.parse((await jit(['broker', 'init', '--dir', dir, '--json'], { env })).stdout) as { token: string }).token;
    await mkdir(path.join(dir, 'data', 'datasets', 'train'), { recursive: true });
    await writeFile(path.join(dir, 'data', 'datasets', 'train', 'a.jsonl'), '{}\n');
  });
  after(() => rm(path.dirname(dir), { recursive: true, force: true }));

  const start = async () => {
    const broker = new JitProcess(['broker', 'start', '--dir', dir, '--port', '0'], { env });
    const [, url = ''] = await broker.readUntil('stdout', /listening on (\S+)\n/);
    return { broker, url };
  };

  it('keeps every acknowledged grant and revocation, and lets nothing outlive its expiry', async () => {
    const acknowledged: Acknowledged = { issued: [], revoked: new Set(), shortLived: [] };
    for (let round = 0; round < 3; round++) {
      const { broker, url } = await start();
      let stopped = false;
      const workers = Array.from({ length: 4 }, async () => {
        while (!stopped) {
          const ttlSeconds = acknowledged.issued.length % 5 === 0 ? 1 : 3600;
          const issued = await request<IssuedGrant>(url, token, 'POST', 'grants', { scopes: ['datasets/train'], ttlSeconds });
          if (!issued) return;
          if (issued.status !== 201) throw new Error(`unexpected ${issued.status}`);
          acknowledged.issued.push(issued.body);
          if (ttlSeconds === 1) acknowledged.shortLived.push(issued.body);
          if (acknowledged.issued.length % 3 === 0) {
            const revoked = await request(url, token, 'DELETE', `grants/${issued.body.id}`);
            if (!revoked) return;
            if (revoked.status === 200) acknowledged.revoked.add(issued.body.id);
          }
        }
      });
      await new Promise((resolve) => setTimeout(resolve, 300 + round * 200));
      broker.kill('SIGKILL');
      stopped = true;
      await Promise.all(workers);
      await broker.done;
    }
    assert.ok(acknowledged.issued.length > 20, `only ${acknowledged.issued.length} grants were issued before the kills`);

    await new Promise((resolve) => setTimeout(resolve, 1100)); // let the 1 s grants pass their expiry
    const { broker, url } = await start();
    try {
      const listed = await request<{ grants: GrantView[] }>(url, token, 'GET', 'grants');
      const states = new Map(listed?.body.grants.map((grant) => [grant.id, grant.state]));
      for (const grant of acknowledged.issued) {
        assert.ok(states.has(grant.id), `acknowledged grant ${grant.id} was lost`);
        if (acknowledged.revoked.has(grant.id))
          assert.equal(states.get(grant.id), 'revoked', `acknowledged revocation of ${grant.id} was lost`);
      }
      for (const grant of acknowledged.shortLived.slice(0, 10)) {
        assert.equal(
          (await readGranted(url, grant.credential, 'datasets/train/a.jsonl')).status,
          401,
          `${grant.id} is usable past its expiry`,
        );
      }
    } finally {
      broker.kill('SIGTERM');
      await broker.done;
    }
  });
});
