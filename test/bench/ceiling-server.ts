// The ceiling for `npm run bench:broker`: a bare Fastify route doing one store write per request,
// on the same engine, driver and settings the broker uses, and nothing else (no auth, no policy,
// no audit). Usage: node test/bench/ceiling-server.ts sqlite FILE | postgres URL
import { DatabaseSync } from 'node:sqlite';
import Fastify from 'fastify';
import pg from 'pg';

type Writer = { write(id: string, body: string, at: number): Promise<void>; close(): Promise<void> };

function sqliteWriter(file: string): Writer {
  const db = new DatabaseSync(file);
  db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;');
  db.exec('CREATE TABLE IF NOT EXISTS writes (id TEXT PRIMARY KEY, body TEXT NOT NULL, at INTEGER NOT NULL)');
  const insert = db.prepare('INSERT INTO writes (id, body, at) VALUES (?, ?, ?)');
  return {
    write: async (id, body, at) => {
      insert.run(id, body, at);
    },
    close: async () => db.close(),
  };
}

/** One autocommitted INSERT through a pg Pool of 10, as PostgresStore.open gives the broker. */
async function postgresWriter(url: string): Promise<Writer> {
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  await pool.query('CREATE TABLE IF NOT EXISTS writes (id TEXT PRIMARY KEY, body JSONB NOT NULL, at BIGINT NOT NULL)');
  return {
    write: async (id, body, at) => {
      await pool.query('INSERT INTO writes (id, body, at) VALUES ($1, $2, $3)', [id, body, at]);
    },
    close: () => pool.end(),
  };
}

const [engine, target] = process.argv.slice(2);
if (!target || (engine !== 'sqlite' && engine !== 'postgres')) throw new Error('usage: ceiling-server.ts sqlite FILE | postgres URL');
const writer = engine === 'sqlite' ? sqliteWriter(target) : await postgresWriter(target);

const app = Fastify({ logger: false });
let counter = 0;
app.post('/write', async (request, reply) => {
  await writer.write(`w${process.pid}-${counter++}`, JSON.stringify(request.body), Date.now());
  return reply.status(201).send({ ok: true });
});
await app.listen({ host: '127.0.0.1', port: 0 });
const address = app.server.address();
process.stdout.write(`listening on http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}\n`);
process.once('SIGTERM', () => void app.close().then(() => writer.close()));
