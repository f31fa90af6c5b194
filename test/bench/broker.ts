// `npm run bench:broker`: how fast the broker issues grants, on SQLite and on PostgreSQL, each
// against the ceiling of a bare Fastify route doing one write to the same store; then how soon a
// revocation on one of three replicas is refused by the others (test/bench/replicas.ts). One run,
// written to docs/benchmarks.md. Every server runs as its own process; this process only
// generates load, bounded in count and time, on loopback. Targets (issue 3): issue rate at least
// half of the ceiling, per store; revocation refused on other replicas within 1 s, p99.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { testEnv } from '../helpers/cli.ts';
import { createTestDatabase, postgresSkipReason } from '../helpers/postgres.ts';
import { latencyAtRate, type Target, throughput } from './load.ts';
import { measureRevocationVisibility } from './replicas.ts';
import { machineLine, ms, stats, writeSection } from './report.ts';
import { DATABASE_URL_ENV, initBrokerDir, type Server, startBroker, startCeiling, stopServer } from './servers.ts';

// Short rounds, many of them: the shared machine's load comes in bursts of seconds, and a burst
// should fall on one pair of rounds rather than decide the median.
const SECONDS = Number(process.env.JIT_BENCH_SECONDS ?? 2);
const ROUNDS = Number(process.env.JIT_BENCH_ROUNDS ?? 9);
const LATENCY_SECONDS = Number(process.env.JIT_BENCH_LATENCY_SECONDS ?? 3);
const CONCURRENCY = Number(process.env.JIT_BENCH_CONCURRENCY ?? 16);
const RATE = Number(process.env.JIT_BENCH_RATE ?? 200);
const REVOCATIONS = Number(process.env.JIT_BENCH_REVOCATIONS ?? 200);

type Engine = { name: string; label: string; store: 'sqlite' | 'postgres' };
const ENGINES: Engine[] = [
  { name: 'SQLite', label: 'one SQLite write', store: 'sqlite' },
  { name: 'PostgreSQL', label: 'one PostgreSQL INSERT', store: 'postgres' },
];

/** `shares`: each round's broker rate over the ceiling's rate in the same round. */
type Measured = { engine: Engine; rows: string[]; shares: number[] };

/** The ceiling and the broker on one store, both running; `cleanup` stops them and drops their data. */
async function startPair(engine: Engine, workdir: string, cleanup: (() => Promise<void>)[]): Promise<[Target, Target]> {
  let env: NodeJS.ProcessEnv;
  let ceilingTarget: string;
  if (engine.store === 'sqlite') {
    env = await testEnv();
    ceilingTarget = path.join(workdir, 'ceiling.db');
  } else {
    const [brokerDatabase, ceilingDatabase] = await Promise.all([createTestDatabase(), createTestDatabase()]);
    cleanup.push(
      () => brokerDatabase.drop(),
      () => ceilingDatabase.drop(),
    );
    env = await testEnv({ [DATABASE_URL_ENV]: brokerDatabase.url });
    ceilingTarget = ceilingDatabase.url;
  }
  const brokerDir = path.join(workdir, `broker-${engine.store}`);
  const token = await initBrokerDir(brokerDir, env);
  const servers: Server[] = [];
  cleanup.push(async () => {
    for (const server of servers) await stopServer(server);
  });
  const ceiling = await startCeiling(`ceiling on ${engine.name}`, engine.store, ceilingTarget, env);
  servers.push(ceiling);
  const broker = await startBroker(`broker on ${engine.name}`, brokerDir, env);
  servers.push(broker);
  return [
    {
      name: `bare Fastify route, ${engine.label} (ceiling)`,
      url: ceiling.url,
      path: '/write',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ scopes: ['datasets/train'] }),
    },
    {
      name: `jit broker, ${engine.name}: POST /v1/grants`,
      url: broker.url,
      path: '/v1/grants',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ scopes: ['datasets/train'], reason: 'bench' }),
    },
  ];
}

/** Throughput in alternating rounds (a noisy neighbour slows both alike; medians of rounds), then latency. */
async function measure(engine: Engine, targets: [Target, Target]): Promise<Measured> {
  const load = { concurrency: CONCURRENCY, seconds: SECONDS };
  for (const target of targets) {
    await throughput(target, load).catch((error: Error) => {
      throw new Error(`warm-up of ${target.name} failed: ${error.message}`);
    });
  }
  const perRound = targets.map((): number[] => []);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [index, target] of targets.entries()) perRound[index]?.push(await throughput(target, load));
  }
  const rows: string[] = [];
  for (const [index, target] of targets.entries()) {
    const rounds = perRound[index] ?? [];
    const latency = await latencyAtRate(target, { rate: RATE, seconds: LATENCY_SECONDS });
    const range = `${Math.min(...rounds).toFixed(0)}–${Math.max(...rounds).toFixed(0)}`;
    rows.push(`| ${target.name} | ${stats(rounds).median.toFixed(0)}/s (${range}) | ${ms(latency.median)} | ${ms(latency.p99)} |`);
  }
  const [ceilingRounds = [], brokerRounds = []] = perRound;
  return { engine, rows, shares: brokerRounds.map((rate, round) => rate / (ceilingRounds[round] ?? Number.NaN)) };
}

async function measureEngine(engine: Engine): Promise<Measured> {
  const workdir = await mkdtemp(path.join(tmpdir(), 'jit-bench-broker-'));
  const cleanup: (() => Promise<void>)[] = [];
  try {
    return await measure(engine, await startPair(engine, workdir, cleanup));
  } finally {
    for (const step of cleanup.reverse()) await step();
    await rm(workdir, { recursive: true, force: true });
  }
}

const unavailable = await postgresSkipReason().catch((error: Error) => error.message);
if (unavailable) throw new Error(`bench:broker measures PostgreSQL too: ${unavailable}`);

const results: Measured[] = [];
for (const engine of ENGINES) results.push(await measureEngine(engine));
const percent = (share: number) => `${(share * 100).toFixed(1)}%`;
const verdicts = results.map(({ engine, shares }) => {
  const share = stats(shares).median;
  const range = `${percent(Math.min(...shares))}–${percent(Math.max(...shares))}`;
  const unsettled = Math.min(...shares) < 0.5 && Math.max(...shares) >= 0.5 ? ', on both sides of 50%: this run does not settle it' : '';
  return `- ${engine.name}: ${percent(share)} of its ceiling (${share >= 0.5 ? 'met' : '**not met**'}; rounds ranged ${range}${unsettled}).`;
});
const issuing = `## Issuing grants (\`npm run bench:broker\`)

${machineLine()} Throughput: ${CONCURRENCY} concurrent callers for ${SECONDS} s, in ${ROUNDS} rounds
that alternate between the broker and the ceiling on the same store (after a warm-up of each); the median round
and, in brackets, the slowest and fastest.
Latency: an open loop of ${RATE} requests a second for ${LATENCY_SECONDS} s. Servers run as their own processes; the load
comes from a third, over loopback. PostgreSQL is the local server (127.0.0.1, default settings, a new database
for each server); both the broker and its ceiling use a pg pool of 10 connections.

| server | requests/s | p50 at ${RATE}/s | p99 at ${RATE}/s |
| --- | --- | --- | --- |
${results.flatMap((result) => result.rows).join('\n')}

The broker's issue rate against the ceiling on the same store, the median over rounds of the broker's rate
divided by the ceiling's in the same round (target: at least 50%):
${verdicts.join('\n')}

Each issue authenticates the token, parses and checks the scopes, evaluates the policy, writes the
grant and its audit event (one transaction), and answers with the credential; the ceiling writes one row.

Reproduce: \`npm run bench:broker\` (\`JIT_BENCH_SECONDS\` a round, \`JIT_BENCH_ROUNDS\`, \`JIT_BENCH_CONCURRENCY\`,
\`JIT_BENCH_RATE\`, \`JIT_BENCH_LATENCY_SECONDS\`),
with PostgreSQL at 127.0.0.1:5432 as the tests use it (\`JIT_TEST_POSTGRES_URL\`; \`.ci/run\` sets one up).
`;
await writeSection('broker', issuing);
process.stdout.write(issuing);

const revocation = await measureRevocationVisibility(REVOCATIONS);
await writeSection('replicas', revocation.markdown);
process.stdout.write(`\n${revocation.markdown}`);
if (revocation.problems > 0) {
  process.stderr.write(`bench:broker: ${revocation.problems} reads or replicas went on serving a revoked grant (see docs/benchmarks.md)\n`);
  process.exitCode = 1;
}
