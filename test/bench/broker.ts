// `npm run bench:broker`: how fast the broker issues grants, against the ceiling of a bare Fastify
// route doing one store write on the same engine, in one run (docs/benchmarks.md). Both servers
// run as their own processes; this process only generates load, bounded in count and time, on
// loopback. Target (issue 3): issue rate at least half of the ceiling.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { BIN, ROOT, testEnv } from '../helpers/cli.ts';
import { machineLine, ms, type Stats, stats, writeSection } from './report.ts';

const SECONDS = Number(process.env.JIT_BENCH_SECONDS ?? 3);
const ROUNDS = Number(process.env.JIT_BENCH_ROUNDS ?? 5);
const CONCURRENCY = Number(process.env.JIT_BENCH_CONCURRENCY ?? 16);
const RATE = Number(process.env.JIT_BENCH_RATE ?? 200);

type Target = { name: string; url: string; path: string; headers: Record<string, string>; body: string };

function started(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /listening on (\S+)/.exec(output);
      if (match?.[1]) resolve(match[1]);
    });
    child.once('exit', (code) => reject(new Error(`server exited early (${code}): ${output}`)));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

async function call(target: Target): Promise<number> {
  const begun = performance.now();
  const response = await fetch(`${target.url}${target.path}`, { method: 'POST', headers: target.headers, body: target.body });
  await response.arrayBuffer();
  if (response.status !== 201) throw new Error(`${target.name}: HTTP ${response.status}`);
  return performance.now() - begun;
}

/** Closed loop: CONCURRENCY callers back to back for SECONDS; completed calls per second. */
async function throughput(target: Target): Promise<number> {
  const deadline = performance.now() + SECONDS * 1000;
  let completed = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < deadline) {
        await call(target);
        completed++;
      }
    }),
  );
  return completed / SECONDS;
}

/** Open loop: RATE calls a second for SECONDS, sent on schedule whatever the answers do; latencies. */
async function latencyAtRate(target: Target): Promise<Stats> {
  const total = RATE * SECONDS;
  const begun = performance.now();
  const calls: Promise<number>[] = [];
  for (let index = 0; index < total; index++) {
    const due = begun + (index * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    calls.push(call(target));
  }
  return stats(await Promise.all(calls));
}

const workdir = await mkdtemp(path.join(tmpdir(), 'jit-bench-broker-'));
const children: ChildProcess[] = [];
try {
  const env = await testEnv();
  const brokerDir = path.join(workdir, 'broker');
  const init = spawn(process.execPath, [BIN, 'broker', 'init', '--dir', brokerDir, '--json'], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let initOutput = '';
  init.stdout.on('data', (chunk: Buffer) => {
    initOutput += chunk.toString();
  });
  await new Promise((resolve) => init.once('exit', resolve));
  const { token } = JSON.parse(initOutput) as { token: string };

  const broker = spawn(process.execPath, [BIN, 'broker', 'start', '--dir', brokerDir, '--port', '0'], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(broker);
  const ceiling = spawn(process.execPath, [path.join(ROOT, 'test/bench/ceiling-server.ts'), 'sqlite', path.join(workdir, 'ceiling.db')], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(ceiling);

  const targets: Target[] = [
    {
      name: 'bare Fastify route, one SQLite write (ceiling)',
      url: await started(ceiling),
      path: '/write',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ scopes: ['datasets/train'] }),
    },
    {
      name: 'jit broker, SQLite: POST /v1/grants',
      url: await started(broker),
      path: '/v1/grants',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ scopes: ['datasets/train'], reason: 'bench' }),
    },
  ];

  const rows: string[] = [];
  const rates: number[] = [];
  for (const target of targets) {
    await throughput(target).catch((error: Error) => {
      throw new Error(`warm-up of ${target.name} failed: ${error.message}`);
    });
  }
  // Rounds alternate between the servers, so a noisy neighbour slows both alike; medians of rounds.
  const perRound = targets.map((): number[] => []);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [index, target] of targets.entries()) perRound[index]?.push(await throughput(target));
  }
  for (const [index, target] of targets.entries()) {
    const perSecond = stats(perRound[index] ?? []).median;
    const latency = await latencyAtRate(target);
    rates.push(perSecond);
    rows.push(`| ${target.name} | ${perSecond.toFixed(0)}/s | ${ms(latency.median)} | ${ms(latency.p99)} |`);
  }
  const [ceilingRate = 0, brokerRate = 0] = rates;
  const report = `## Issuing grants (\`npm run bench:broker\`)

${machineLine()} Throughput: ${CONCURRENCY} concurrent callers for ${SECONDS} s, in ${ROUNDS} rounds
that alternate between the servers (after a warm-up of each); the median round. Latency: an open loop of ${RATE} requests a second for ${SECONDS} s. Servers run
as their own processes; the load comes from a third, over loopback.

| server | requests/s | p50 at ${RATE}/s | p99 at ${RATE}/s |
| --- | --- | --- | --- |
${rows.join('\n')}

The broker issues grants at ${((brokerRate / ceilingRate) * 100).toFixed(0)}% of the ceiling (target: at least 50%). Each
issue authenticates the token, parses and checks the scopes, evaluates the policy, writes the
grant and its audit event, and answers with the credential.

Reproduce: \`npm run bench:broker\` (\`JIT_BENCH_SECONDS\`, \`JIT_BENCH_ROUNDS\`, \`JIT_BENCH_CONCURRENCY\`, \`JIT_BENCH_RATE\`).
`;
  await writeSection('broker', report);
  process.stdout.write(report);
} finally {
  for (const child of children) await stop(child);
  await rm(workdir, { recursive: true, force: true });
}
