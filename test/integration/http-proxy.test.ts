// The API proxy against a real upstream HTTP server on loopback: the job's ephemeral key works
// only for its scope's methods and paths, the upstream secret never reaches the job, streams
// stream, and a revoked grant's stream is cut.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { AuditRecord } from '../../src/core/audit.ts';
import type { IssuedGrant } from '../../src/core/grant.ts';
import { api, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { waitFor } from '../helpers/state.ts';

const SECRET_ENV = 'JIT_TEST_UPSTREAM_KEY';
const SECRET = 'sk-upstream-0123456789abcdefghijklmnopqrstuvwxyz';

const POLICY = `policy:
  rules:
    - name: admin-models
      subjects: ["user:admin"]
      scopes: ["models"]
      actions: ["POST /v1/embeddings", "POST /v1/chat/completions", "GET /v1/models/*", "GET /echo", "GET /stream"]
      defaultTtl: 1h
      maxTtl: 8h
    - name: admin-metered
      subjects: ["user:admin"]
      scopes: ["metered"]
      actions: ["GET /echo"]
      defaultTtl: 1h
      maxTtl: 8h
      budget: { requests: 3 }
    - name: admin-metered-bytes
      subjects: ["user:admin"]
      scopes: ["bytemeter"]
      actions: ["GET /echo"]
      defaultTtl: 1h
      maxTtl: 8h
      budget: { bytes: 1000 }
`;

/** The upstream: checks the real key, echoes what it received (headers included), streams events. */
function startUpstream(): Promise<{ server: http.Server; url: string; seen: http.IncomingHttpHeaders[] }> {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((request, response) => {
    seen.push(request.headers);
    if (request.headers.authorization !== `Bearer ${SECRET}`) {
      response.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"bad upstream key"}');
      return;
    }
    if (request.url === '/stream') {
      response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      let sent = 0;
      const timer = setInterval(() => {
        sent += 1;
        response.write(`data: {"token":${sent}}\n\n`);
        if (sent === 20) {
          clearInterval(timer);
          response.end('data: [DONE]\n\n');
        }
      }, 100);
      response.on('close', () => clearInterval(timer));
      return;
    }
    let body = '';
    request.on('data', (chunk: Buffer) => {
      body += chunk.toString();
    });
    request.on('end', () => {
      // An upstream that echoes the request, headers and all: the worst case for the secret.
      response
        .writeHead(200, { 'content-type': 'application/json', 'x-echo-authorization': String(request.headers.authorization) })
        .end(JSON.stringify({ method: request.method, url: request.url, headers: request.headers, body }));
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen })),
  );
}

describe('API proxy', () => {
  let broker: TestBroker;
  let upstream: Awaited<ReturnType<typeof startUpstream>>;
  const grant = async (scopes: string[]) => {
    const response = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes, heartbeat: false });
    assert.equal(response.status, 201, JSON.stringify(response.body));
    return response.body;
  };
  const call = (issued: IssuedGrant, method: string, path: string, body?: string) =>
    fetch(`${issued.env.MODELS_BASE_URL}${path}`, {
      method,
      headers: { authorization: `Bearer ${issued.env.MODELS_API_KEY}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body } : {}),
    });

  before(async () => {
    upstream = await startUpstream();
    process.env[SECRET_ENV] = SECRET;
    broker = await startTestBroker({
      policy: POLICY,
      resources: [
        ['models', 'MODELS'],
        ['metered', 'METERED'],
        ['bytemeter', 'BYTEMETER'],
      ]
        .flatMap(([name, prefix]) => [
          `  ${name}:`,
          '    kind: http',
          `    upstream: ${upstream.url}`,
          `    secretEnv: ${SECRET_ENV}`,
          `    envPrefix: ${prefix}`,
        ])
        .join('\n'),
    });
  });
  after(async () => {
    await broker?.cleanup();
    upstream?.server.close();
    delete process.env[SECRET_ENV];
  });

  it('gives the job <PREFIX>_BASE_URL and <PREFIX>_API_KEY, and forwards allowed calls with the upstream key', async () => {
    const issued = await grant(['models:POST /v1/embeddings']);
    assert.equal(issued.env.MODELS_BASE_URL, `${broker.url}/proxy/models`);
    assert.equal(issued.env.MODELS_API_KEY, issued.credential);
    const response = await call(issued, 'POST', '/v1/embeddings', '{"input":"hello"}');
    assert.equal(response.status, 200);
    const echoed = (await response.json()) as { method: string; url: string; body: string; headers: Record<string, string> };
    assert.deepEqual([echoed.method, echoed.url, echoed.body], ['POST', '/v1/embeddings', '{"input":"hello"}']);
    const received = upstream.seen.at(-1) ?? {};
    assert.equal(received.authorization, `Bearer ${SECRET}`, 'the upstream got its real key');
    assert.ok(!JSON.stringify(received).includes(issued.credential), 'and never the ephemeral key');
  });

  it('never lets a byte of the upstream secret reach the job, even from an upstream that echoes it', async () => {
    const issued = await grant(['models:GET /echo']);
    const response = await call(issued, 'GET', '/echo');
    const text = await response.text();
    const headers = JSON.stringify([...response.headers.entries()]);
    assert.equal(response.status, 200);
    assert.ok(!text.includes(SECRET) && !headers.includes(SECRET), 'blanked in body and headers');
    assert.match(text, /Bearer \*{10,}/, 'blanked, not dropped: the length stays right');
    const events = JSON.stringify(await broker.broker.grants.events(issued.id));
    assert.ok(!events.includes(SECRET) && !events.includes(issued.credential), 'nor in the audit trail');
  });

  it('refuses methods and paths outside the scope, unknown keys, and unknown APIs with one clear JSON error', async () => {
    const issued = await grant(['models:GET /v1/models/*']);
    assert.equal((await call(issued, 'GET', '/v1/models/small')).status, 200);
    const wrongPath = await call(issued, 'GET', '/v1/models/small/weights');
    assert.equal(wrongPath.status, 403);
    const problem = (await wrongPath.json()) as { code: string; detail: string; hint: string };
    assert.equal(problem.code, 'outside_scope');
    assert.match(problem.detail, /does not allow GET \/v1\/models\/small\/weights on models/);
    assert.match(problem.hint, /it allows: GET \/v1\/models\/\*/);
    assert.equal((await call(issued, 'POST', '/v1/models/small', '{}')).status, 403, 'the method counts');
    const unknown = await fetch(`${broker.url}/proxy/models/v1/models/small`, { headers: { authorization: 'Bearer jitc_guess' } });
    assert.equal(unknown.status, 401);
    const other = await fetch(`${broker.url}/proxy/nope/x`, { headers: { authorization: `Bearer ${issued.credential}` } });
    assert.equal(other.status, 404);
    const refusals = (await broker.broker.grants.events(issued.id)).filter((event) => event.type === 'data.refused');
    assert.equal(refusals.length, 2);
  });

  it('streams server-sent events as they arrive, and records the call', async () => {
    const issued = await grant(['models:GET /stream']);
    const response = await call(issued, 'GET', '/stream');
    assert.equal(response.headers.get('content-type'), 'text/event-stream');
    const reader = response.body?.getReader();
    const started = Date.now();
    const first = await reader?.read();
    assert.match(new TextDecoder().decode(first?.value), /"token":1/);
    assert.ok(Date.now() - started < 1000, 'the first event arrives long before the stream ends (2 s)');
    let text = new TextDecoder().decode(first?.value);
    for (;;) {
      const next = await reader?.read();
      if (!next || next.done) break;
      text += new TextDecoder().decode(next.value);
    }
    assert.match(text, /\[DONE\]/);
    const call_ = (await broker.broker.grants.events(issued.id)).find((event) => event.type === 'data.call');
    assert.equal(call_?.detail.path, '/stream');
    assert.equal(call_?.detail.status, 200);
    assert.equal(typeof call_?.detail.latencyMs, 'number');
  });

  it('suspends a grant that uses up its request budget, and records why', async () => {
    const issued = await grant(['metered:GET /echo']);
    const get = () => fetch(`${issued.env.METERED_BASE_URL}/echo`, { headers: { authorization: `Bearer ${issued.env.METERED_API_KEY}` } });
    for (let index = 0; index < 3; index++) assert.equal((await get()).status, 200, `call ${index + 1} of 3`);
    const over = await get();
    assert.equal(over.status, 403);
    const problem = (await over.json()) as { code: string; detail: string };
    assert.equal(problem.code, 'budget_exceeded');
    assert.match(problem.detail, /suspended: its budget of 3 requests is used up/);
    const view = await api<{ state: string; endReason: string }>(broker, broker.token, 'GET', `grants/${issued.id}`);
    assert.equal(view.body.state, 'suspended');
    assert.equal((await get()).status, 403, 'and stays suspended');
    const suspended = (await broker.broker.grants.events(issued.id)).find((event) => event.type === 'grant.suspended');
    assert.deepEqual(suspended?.detail.budget, { requests: 3 });
    // The data owner's alert, raised from the suspension record as an auditor reads the trail.
    const trail = async (filter: string) =>
      (await api<{ records: AuditRecord[] }>(broker, broker.token, 'GET', `audit?grant=${issued.id}&${filter}`)).body.records;
    const alert = await waitFor('the budget_exhausted alert', async () => (await trail('action=alert.budget_exhausted'))[0], 10_000);
    const [suspension] = await trail('action=grant.suspended');
    assert.equal(alert.outcome, 'alert');
    assert.equal(alert.actor, 'system');
    assert.equal(alert.subject, 'user:admin');
    assert.equal(alert.scope, 'metered:GET /echo');
    assert.equal(alert.details.reason, 'its budget of 3 requests is used up');
    assert.equal(alert.details.record, suspension?.seq, 'it names the suspension');
    assert.equal((await trail('action=alert.budget_exhausted')).length, 1, 'once');
  });

  it('suspends a grant once its responses pass the byte budget', async () => {
    const issued = await grant(['bytemeter:GET /echo']);
    const get = () =>
      fetch(`${issued.env.BYTEMETER_BASE_URL}/echo`, { headers: { authorization: `Bearer ${issued.env.BYTEMETER_API_KEY}` } });
    let calls = 0;
    for (;;) {
      const response = await get();
      await response.text();
      if (response.status !== 200) {
        assert.equal(response.status, 403);
        break;
      }
      calls += 1;
      assert.ok(calls < 10, 'each echo is a few hundred bytes: the 1000-byte budget ends it within a few calls');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.ok(calls >= 2, `${calls} calls went through before the budget ran out`);
    assert.equal((await api<{ state: string }>(broker, broker.token, 'GET', `grants/${issued.id}`)).body.state, 'suspended');
  });

  it("cuts a revoked grant's stream mid-way and refuses its next call", async () => {
    const issued = await grant(['models:GET /stream']);
    const response = await call(issued, 'GET', '/stream');
    const reader = response.body?.getReader();
    await reader?.read();
    await api(broker, broker.token, 'DELETE', `grants/${issued.id}`);
    let cut = false;
    let text = '';
    try {
      for (;;) {
        const next = await reader?.read();
        if (!next || next.done) break;
        text += new TextDecoder().decode(next.value);
      }
    } catch {
      cut = true;
    }
    assert.ok(cut || !text.includes('[DONE]'), 'the stream did not run to its end');
    assert.equal((await call(issued, 'GET', '/stream')).status, 401);
  });
});
