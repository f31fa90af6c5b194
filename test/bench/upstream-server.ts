// The upstream for `npm run bench:proxy`: a bare node:http server standing in for an embeddings
// API. POST /v1/embeddings with `Authorization: Bearer $JIT_BENCH_UPSTREAM_KEY` reads the request
// body to its end and answers a small JSON body; anything else is a 401 or a 404. No framework, no
// logging: what it costs is the same whether the call came directly or through the broker.
// Usage: JIT_BENCH_UPSTREAM_KEY=... node test/bench/upstream-server.ts
import { serveOnLoopback } from './loopback-server.ts';

const key = process.env.JIT_BENCH_UPSTREAM_KEY;
if (!key) throw new Error('upstream-server.ts needs JIT_BENCH_UPSTREAM_KEY');
const expected = `Bearer ${key}`;

/** The same bytes for every call: eight dimensions, as a real API's response shape. */
const ANSWER = JSON.stringify({
  object: 'list',
  data: [{ object: 'embedding', index: 0, embedding: [0.0123, -0.0456, 0.0789, -0.1011, 0.1213, -0.1415, 0.1617, -0.1819] }],
  model: 'bench-embedding',
  usage: { prompt_tokens: 4, total_tokens: 4 },
});

serveOnLoopback((request, response) => {
  if (request.headers.authorization !== expected) {
    request.resume();
    response.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"bad key"}');
    return;
  }
  if (request.method !== 'POST' || request.url !== '/v1/embeddings') {
    request.resume();
    response.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found"}');
    return;
  }
  let bytes = 0;
  request.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
  });
  request.on('end', () => {
    if (bytes === 0) response.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"empty body"}');
    else response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(ANSWER) }).end(ANSWER);
  });
});
