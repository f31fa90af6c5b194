// The skeleton every bare baseline server of the benchmarks shares (static-server.ts for
// bench:gateway, upstream-server.ts for bench:proxy): a node:http server on a free loopback port
// that says `listening on URL` on stdout (what servers.ts startServer waits for) and closes on SIGTERM.
import http from 'node:http';

export function serveOnLoopback(handler: http.RequestListener): http.Server {
  const server = http.createServer(handler);
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    process.stdout.write(`listening on http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}\n`);
  });
  process.once('SIGTERM', () => {
    server.close();
    server.closeAllConnections();
  });
  return server;
}
