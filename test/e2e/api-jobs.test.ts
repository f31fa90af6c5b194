// A real SDK from the registry under `jit run`: the openai package reads OPENAI_BASE_URL and
// OPENAI_API_KEY by itself, calls through the broker's proxy, and streams; the upstream secret
// never reaches the job.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { jit } from '../helpers/cli.ts';
import { assertReleased, onlyGrant } from '../helpers/state.ts';
import { setUp } from './support.ts';

const SECRET_ENV = 'JIT_E2E_OPENAI_UPSTREAM_KEY';
const SECRET = 'sk-real-upstream-key-do-not-leak-0123456789';

/** An OpenAI-shaped upstream on loopback: embeddings, and a streamed chat completion. */
let upstream: http.Server;
let upstreamUrl = '';
before(async () => {
  upstream = http.createServer((request, response) => {
    if (request.headers.authorization !== `Bearer ${SECRET}`) {
      response.writeHead(401, { 'content-type': 'application/json' }).end('{"error":{"message":"bad key"}}');
      return;
    }
    let body = '';
    request.on('data', (chunk: Buffer) => {
      body += chunk.toString();
    });
    request.on('end', () => {
      if (request.url === '/v1/embeddings') {
        // The SDK asks for base64 floats by default, as the real API serves them.
        const vector = [0.25, 0.5];
        const base64 = (JSON.parse(body) as { encoding_format?: string }).encoding_format === 'base64';
        response.writeHead(200, { 'content-type': 'application/json' }).end(
          JSON.stringify({
            object: 'list',
            data: [
              {
                object: 'embedding',
                index: 0,
                embedding: base64 ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector,
              },
            ],
            model: 'test-embed',
            usage: { prompt_tokens: 1, total_tokens: 1 },
          }),
        );
        return;
      }
      if (request.url === '/v1/chat/completions') {
        response.writeHead(200, { 'content-type': 'text/event-stream' });
        const words = ['Hel', 'lo', ' from', ' upstream'];
        for (const word of words) {
          const chunk = {
            id: 'c1',
            object: 'chat.completion.chunk',
            created: 0,
            model: 'test-chat',
            choices: [{ index: 0, delta: { content: word }, finish_reason: null }],
          };
          response.write(`data: ${JSON.stringify(chunk)}\n\n`);
        }
        response.end('data: [DONE]\n\n');
        return;
      }
      response.writeHead(404).end();
    });
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}/v1`;
  process.env[SECRET_ENV] = SECRET;
});
after(() => {
  upstream?.close();
  delete process.env[SECRET_ENV];
});

const POLICY = `policy:
  rules:
    - name: openai
      subjects: ["user:admin"]
      scopes: ["openai"]
      actions: ["POST /embeddings", "POST /chat/completions"]
      defaultTtl: 15m
      maxTtl: 1h
`;

/** The job: plain openai SDK code, configured only by its environment; prints what a user would see. */
const JOB = `
const { default: OpenAI } = await import(${JSON.stringify(import.meta.resolve('openai'))});
const client = new OpenAI();
const embedding = await client.embeddings.create({ model: 'test-embed', input: 'hello' });
console.log('embedding', JSON.stringify(embedding.data[0].embedding));
const stream = await client.chat.completions.create({ model: 'test-chat', messages: [{ role: 'user', content: 'hi' }], stream: true });
let text = '';
for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
console.log('chat', text);
console.log('env', JSON.stringify(process.env));
`;

test('the openai SDK works under jit run through the injected variables, streaming included, without the upstream key', async (t) => {
  const places = await setUp(t, {
    policy: POLICY,
    resources: [
      '  openai:',
      '    kind: http',
      `    upstream: ${upstreamUrl}`,
      `    secretEnv: ${SECRET_ENV}`,
      '    envPrefix: OPENAI',
    ].join('\n'),
  });
  if (!places) return;
  const result = await jit(
    [
      'run',
      '--scope',
      'openai:POST /embeddings',
      '--scope',
      'openai:POST /chat/completions',
      '--',
      process.execPath,
      '--input-type=module',
      '-e',
      JOB,
    ],
    { env: { ...places.env, OPENAI_API_KEY: 'sk-standing-key-from-the-shell' } },
  );
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /^embedding \[0\.25,0\.5\]$/m);
  assert.match(result.stdout, /^chat Hello from upstream$/m);
  assert.ok(!result.stdout.includes(SECRET) && !result.stderr.includes(SECRET), 'the upstream key never reaches the job');
  assert.ok(!result.stdout.includes('sk-standing-key-from-the-shell'), "the shell's own key is replaced by the grant's");
  await assertReleased(places, (await onlyGrant(places.broker)).id);
});
