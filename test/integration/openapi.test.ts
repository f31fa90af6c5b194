import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildApi } from '../../src/broker/api/server.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { ROOT } from '../helpers/cli.ts';

type Document = { paths: Record<string, Record<string, unknown>> };

/** OpenAPI's /v1/grants/{id} and /v1/files/{path} as Fastify writes them. */
function fastifyUrl(openApiPath: string): string {
  return openApiPath.replace('/{path}', '/*').replace(/\{(\w+)\}/g, ':$1');
}

describe('the OpenAPI document', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker();
  });
  after(() => broker.cleanup());

  it('is served at /v1/openapi.json and is the one kept in docs/openapi.json', async () => {
    const response = await fetch(`${broker.url}/v1/openapi.json`);
    assert.equal(response.status, 200);
    const served = await response.json();
    const kept = JSON.parse(await readFile(path.join(ROOT, 'docs', 'openapi.json'), 'utf8'));
    assert.deepEqual(served, kept, 'docs/openapi.json is stale: regenerate it with `npx jit broker openapi > docs/openapi.json`');
  });

  it('lists exactly the routes the broker serves', async () => {
    const routes: string[] = [];
    const app = buildApi({
      config: broker.broker.config,
      grants: broker.broker.grants,
      principals: broker.broker.principals,
      audit: broker.broker.audit,
      version: 'test',
      onRoute: (route) => routes.push(`${route.method} ${route.url}`),
    });
    await app.ready();
    await app.close();
    const document = (await (await fetch(`${broker.url}/v1/openapi.json`)).json()) as Document;
    const documented = Object.entries(document.paths).flatMap(([route, methods]) =>
      Object.keys(methods).map((method) => `${method.toUpperCase()} ${fastifyUrl(route)}`),
    );
    assert.deepEqual([...routes].sort(), [...documented].sort());
  });
});

describe('request ids', () => {
  let broker: TestBroker;
  before(async () => {
    broker = await startTestBroker();
  });
  after(() => broker.cleanup());

  it("echo the caller's x-request-id, make one up otherwise, and appear in error bodies", async () => {
    const given = await fetch(`${broker.url}/v1/health`, { headers: { 'x-request-id': 'ci-step-42' } });
    assert.equal(given.headers.get('x-request-id'), 'ci-step-42');
    const made = await fetch(`${broker.url}/v1/grants`);
    const id = made.headers.get('x-request-id') ?? '';
    assert.match(id, /^[0-9a-f-]{36}$/);
    const body = (await made.json()) as { code: string; requestId: string; type: string; status: number };
    assert.equal(made.status, 401);
    assert.equal(body.requestId, id);
    assert.deepEqual([body.type, body.status, body.code], ['urn:jit:error:unauthenticated', 401, 'unauthenticated']);
    assert.match(made.headers.get('content-type') ?? '', /^application\/problem\+json/, 'RFC 9457 problem details');
    const unsafe = await fetch(`${broker.url}/v1/health`, { headers: { 'x-request-id': 'bad id with spaces' } });
    assert.match(unsafe.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/, 'an unsafe id is replaced');
  });
});
