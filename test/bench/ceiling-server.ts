// The ceiling for `npm run bench:broker`: a bare Fastify route doing one store write per request,
// on the same engine and settings the broker uses, and nothing else (no auth, no policy, no audit).
// Usage: node test/bench/ceiling-server.ts sqlite FILE
import { DatabaseSync } from 'node:sqlite';
import Fastify from 'fastify';

const [engine, target] = process.argv.slice(2);
if (engine !== 'sqlite' || !target) throw new Error('usage: ceiling-server.ts sqlite FILE');

const db = new DatabaseSync(target);
db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;');
db.exec('CREATE TABLE IF NOT EXISTS writes (id TEXT PRIMARY KEY, body TEXT NOT NULL, at INTEGER NOT NULL)');
const insert = db.prepare('INSERT INTO writes (id, body, at) VALUES (?, ?, ?)');

const app = Fastify({ logger: false });
let counter = 0;
app.post('/write', async (request, reply) => {
  insert.run(`w${process.pid}-${counter++}`, JSON.stringify(request.body), Date.now());
  return reply.status(201).send({ ok: true });
});
await app.listen({ host: '127.0.0.1', port: 0 });
const address = app.server.address();
process.stdout.write(`listening on http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}\n`);
process.once('SIGTERM', () => void app.close().then(() => db.close()));
