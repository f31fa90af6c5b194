// The servers the broker benchmarks measure, each in a process of its own so that the load
// generator (this process) never shares an event loop with what it measures.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BIN, ROOT } from '../helpers/cli.ts';

/** The variable a PostgreSQL broker's broker.yaml names (store.urlEnv) for its database URL. */
export const DATABASE_URL_ENV = 'JIT_BENCH_DATABASE_URL';

export type Server = { name: string; url: string; child: ChildProcess };

/** Spawns `node ARGS...` and resolves with the URL it prints as "listening on URL". */
export function startServer(name: string, args: string[], env: NodeJS.ProcessEnv): Promise<Server> {
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /listening on (\S+)/.exec(output);
      if (match?.[1]) resolve({ name, url: match[1], child });
    });
    child.once('exit', (code) => reject(new Error(`${name} exited early (${code}): ${output}`)));
  });
}

export async function stopServer(server: Server): Promise<void> {
  if (server.child.exitCode !== null || server.child.signalCode !== null) return;
  const exited = new Promise((resolve) => server.child.once('exit', resolve));
  server.child.kill('SIGTERM');
  await exited;
}

/**
 * `jit broker init` in DIR, on SQLite, or on PostgreSQL when `env` carries DATABASE_URL_ENV; the
 * admin token. A sample file goes under the datasets root for the data plane to serve.
 */
export async function initBrokerDir(dir: string, env: NodeJS.ProcessEnv): Promise<string> {
  const postgres = env[DATABASE_URL_ENV] === undefined ? [] : ['--postgres-url-env', DATABASE_URL_ENV];
  const init = spawn(process.execPath, [BIN, 'broker', 'init', '--dir', dir, ...postgres, '--json'], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let output = '';
  init.stdout.on('data', (chunk: Buffer) => {
    output += chunk.toString();
  });
  const code = await new Promise((resolve) => init.once('exit', resolve));
  if (code !== 0) throw new Error(`jit broker init failed (${code}): ${output}`);
  const shard = path.join(dir, 'data', 'datasets', 'train', 'shard-0000.jsonl');
  await mkdir(path.dirname(shard), { recursive: true });
  await writeFile(shard, '{"prompt":"2+2","completion":"4"}\n');
  return (JSON.parse(output) as { token: string }).token;
}

/** `jit broker start` on a free loopback port, on the broker directory DIR. */
export function startBroker(name: string, dir: string, env: NodeJS.ProcessEnv): Promise<Server> {
  return startServer(name, [BIN, 'broker', 'start', '--dir', dir, '--port', '0'], env);
}

/** The ceiling: a bare Fastify route doing one write to `engine` at `target` (test/bench/ceiling-server.ts). */
export function startCeiling(name: string, engine: 'sqlite' | 'postgres', target: string, env: NodeJS.ProcessEnv): Promise<Server> {
  return startServer(name, [path.join(ROOT, 'test/bench/ceiling-server.ts'), engine, target], env);
}
