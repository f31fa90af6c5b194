// The baseline for `npm run bench:gateway`: a bare node:http server that answers GET /<path> with
// the file <root>/<path> (stat for content-length, then fs.createReadStream), and nothing else: no
// authentication, no audit, no ETag, no ranges. Usage: node test/bench/static-server.ts ROOT
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { serveOnLoopback } from './loopback-server.ts';

if (!process.argv[2]) throw new Error('usage: static-server.ts ROOT');
const root = path.resolve(process.argv[2]);

serveOnLoopback(async (request, response) => {
  const relative = decodeURIComponent((request.url ?? '/').split('?')[0] ?? '/');
  const file = path.join(root, relative);
  // A benchmark fixture, but on loopback all the same: nothing outside ROOT.
  if (request.method !== 'GET' || !file.startsWith(`${root}${path.sep}`)) {
    response.writeHead(400).end();
    return;
  }
  const stats = await stat(file).catch(() => undefined);
  if (!stats?.isFile()) {
    response.writeHead(404).end();
    return;
  }
  response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': stats.size });
  createReadStream(file).pipe(response);
});
