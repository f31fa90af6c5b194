// `npm run bench:proxy`: POST /v1/embeddings against a bare node:http upstream
// (test/bench/upstream-server.ts), called directly with the upstream's key and through the broker's
// API proxy (`<broker>/proxy/models/...`) with a grant's ephemeral key, in one run (issue 6,
// "Measured"). The upstream and the broker are processes of their own on loopback; this process is
// the client. Rounds alternate between the two, at CONCURRENCY requests in flight and then one at a
// time; then one more pass against a broker under `node --cpu-prof`, to say where its time goes.
// Target: under 1 ms added latency at the median. Written to docs/benchmarks.md.
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { ROOT, testEnv } from '../helpers/cli.ts';
import type { ProfileSummary } from './profile.ts';
import { machineLine, stats, writeSection } from './report.ts';
import { alternate, issueGrant, keepAlive, median, percent, profileBroker, range as rangeOf, shareRows } from './rounds.ts';
import { initBrokerDir, type Server, startBroker, startServer, stopServer } from './servers.ts';

const REQUESTS = Number(process.env.JIT_BENCH_REQUESTS ?? 3000);
const ROUNDS = Number(process.env.JIT_BENCH_ROUNDS ?? 9);
const CONCURRENCY = Number(process.env.JIT_BENCH_CONCURRENCY ?? 8);
const SERIAL_REQUESTS = Number(process.env.JIT_BENCH_SERIAL_REQUESTS ?? 1000);
const ADDED_P50_TARGET_MS = 1;

const SECRET_ENV = 'JIT_BENCH_UPSTREAM_KEY';
const CALL = '/v1/embeddings';
const BODY = JSON.stringify({ model: 'bench-embedding', input: 'The quick brown fox jumps over the lazy dog.' });

/** Where to send the call and with which key: the upstream's own, or a grant's through the proxy. */
type Target = { name: string; port: number; path: string; key: string; agent: http.Agent };
type Round = { perSecond: number; p50: number; p99: number };

/** One POST on a keep-alive connection, its response read to the end. */
function call(target: Target): Promise<void> {
  return new Promise((resolve, reject) => {
    const request = http.request(
      {
        agent: target.agent,
        host: '127.0.0.1',
        port: target.port,
        method: 'POST',
        path: target.path,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(BODY),
          authorization: `Bearer ${target.key}`,
        },
      },
      (response) => {
        let body = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          body += chunk;
        });
        response.once('error', reject);
        response.once('end', () => {
          if (response.statusCode === 200 && body.startsWith('{"object":"list"')) resolve();
          else reject(new Error(`${target.name}: HTTP ${response.statusCode}: ${body.slice(0, 200)}`));
        });
      },
    );
    request.once('error', reject);
    request.end(BODY);
  });
}

/** `count` calls, `concurrency` in flight (closed loop); each call's latency. */
async function round(target: Target, count: number, concurrency: number): Promise<Round> {
  const latencies: number[] = new Array(count);
  let next = 0;
  const begun = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let index = next++; index < count; index = next++) {
        const sent = performance.now();
        await call(target);
        latencies[index] = performance.now() - sent;
      }
    }),
  );
  const elapsed = performance.now() - begun;
  const latency = stats(latencies);
  return { perSecond: (count * 1000) / elapsed, p50: latency.median, p99: latency.p99 };
}

function target(name: string, server: Server, requestPath: string, key: string): Target {
  return { name, ...keepAlive(server, CONCURRENCY), path: requestPath, key };
}

/** An http resource `models` on the upstream, and a rule that lets the admin POST embeddings to it. */
async function addModelsApi(brokerDir: string, upstream: Server): Promise<void> {
  const file = path.join(brokerDir, 'broker.yaml');
  const resource = [
    '  models:',
    '    kind: http',
    `    upstream: ${upstream.url}`,
    `    secretEnv: ${SECRET_ENV}`,
    '    envPrefix: MODELS',
    '',
  ];
  const rule = [
    '    - name: admin-models',
    '      subjects: ["user:admin"]',
    '      scopes: ["models"]',
    `      actions: ["POST ${CALL}"]`,
    '      defaultTtl: 1h',
    '      maxTtl: 8h',
    '',
  ];
  const yaml = (await readFile(file, 'utf8'))
    .replace(/\nresources:\n/, `\nresources:\n${resource.join('\n')}`)
    .replace(/\n {2}rules:\n/, `\n  rules:\n${rule.join('\n')}`);
  if (!yaml.includes('admin-models') || !yaml.includes('kind: http')) throw new Error(`could not add the models API to ${file}`);
  await writeFile(file, yaml);
}

/** A broker under `node --cpu-prof` on the same directory: one round at CONCURRENCY; its profile of that round. */
async function profileProxy(brokerDir: string, env: NodeJS.ProcessEnv, profileDir: string, key: string): Promise<ProfileSummary> {
  const { round: profile } = await profileBroker({ brokerDir, env, profileDir, port: 0 }, async (server, sinceSpawn) => {
    const profiled = target('broker under --cpu-prof', server, `/proxy/models${CALL}`, key);
    try {
      await round(profiled, 1000, CONCURRENCY);
      const from = sinceSpawn();
      await round(profiled, REQUESTS, CONCURRENCY);
      return { round: [from, sinceSpawn()] as [number, number] };
    } finally {
      profiled.agent.destroy();
    }
  });
  return profile;
}

type Figures = {
  loaded: [Round[], Round[]];
  serial: [Round[], Round[]];
  profile: ProfileSummary;
  measureSeconds: number;
};

async function run(): Promise<Figures> {
  const workdir = await mkdtemp(path.join(tmpdir(), 'jit-bench-proxy-'));
  const secret = `sk-bench-${randomBytes(24).toString('hex')}`;
  const env = await testEnv({ [SECRET_ENV]: secret });
  const servers: Server[] = [];
  const targets: Target[] = [];
  try {
    const brokerDir = path.join(workdir, 'broker');
    const token = await initBrokerDir(brokerDir, env);
    const upstream = await startServer('upstream', [path.join(ROOT, 'test/bench/upstream-server.ts')], env);
    servers.push(upstream);
    await addModelsApi(brokerDir, upstream);
    const broker = await startBroker('broker', brokerDir, env);
    servers.push(broker);
    const grant = await issueGrant(broker, token, [`models:POST ${CALL}`], 'bench:proxy');
    const baseUrl = new URL(grant.env.MODELS_BASE_URL ?? '');
    const key = grant.env.MODELS_API_KEY ?? '';
    const pair: [Target, Target] = [
      target('upstream directly', upstream, CALL, secret),
      target('through the jit proxy', broker, `${baseUrl.pathname}${CALL}`, key),
    ];
    targets.push(...pair);

    // Warm-up: both servers' JIT, connections, the proxy's agent to the upstream.
    for (const each of pair) await round(each, Math.min(1000, REQUESTS), CONCURRENCY);
    const measured = performance.now();
    const loaded = await alternate(ROUNDS, pair, (each) => round(each, REQUESTS, CONCURRENCY));
    const serial = await alternate(ROUNDS, pair, (each) => round(each, SERIAL_REQUESTS, 1));
    const measureSeconds = (performance.now() - measured) / 1000;
    for (const each of targets) each.agent.destroy();
    await stopServer(broker);

    const profile = await profileProxy(brokerDir, env, path.join(workdir, 'profile'), key);
    return { loaded, serial, profile, measureSeconds };
  } finally {
    for (const each of targets) each.agent.destroy();
    for (const server of servers) await stopServer(server);
    await rm(workdir, { recursive: true, force: true });
    if (env.HOME) await rm(env.HOME, { recursive: true, force: true });
  }
}

const range = (values: number[], digits: number) => rangeOf(values, digits, ' to ');

/** Each round's proxy figure minus the direct figure of the same round. */
const added = ([direct, proxied]: [Round[], Round[]], pick: (round: Round) => number) =>
  proxied.map((round, index) => pick(round) - pick(direct[index] ?? { perSecond: Number.NaN, p50: Number.NaN, p99: Number.NaN }));

function verdict(values: number[]): string {
  const met = median(values) < ADDED_P50_TARGET_MS;
  const meets = (value: number) => value < ADDED_P50_TARGET_MS;
  const settled = values.every(meets) || !values.some(meets);
  return `${met ? 'met' : '**not met**'}${settled ? '' : '; rounds fall on both sides of the target: this run does not settle it'}`;
}

function table(rounds: [Round[], Round[]]): string {
  const row = (name: string, each: Round[]) =>
    `| ${name} | ${median(each.map((r) => r.perSecond)).toFixed(0)}/s (${range(
      each.map((r) => r.perSecond),
      0,
    )}) | ${median(each.map((r) => r.p50)).toFixed(3)} ms | ${median(each.map((r) => r.p99)).toFixed(3)} ms |`;
  const p50 = added(rounds, (r) => r.p50);
  const p99 = added(rounds, (r) => r.p99);
  return `| | requests/s | latency p50 | latency p99 |
| --- | --- | --- | --- |
${row('upstream directly', rounds[0])}
${row('through the jit proxy', rounds[1])}
| added by the proxy | | ${median(p50).toFixed(3)} ms (${range(p50, 3)}) | ${median(p99).toFixed(3)} ms (${range(p99, 3)}) |`;
}

function report({ loaded, serial, profile, measureSeconds }: Figures): string {
  const loadedP50 = added(loaded, (r) => r.p50);
  const serialP50 = added(serial, (r) => r.p50);
  const shares = loaded[1].map((round, index) => round.perSecond / (loaded[0][index]?.perSecond ?? Number.NaN));
  return `## API proxy (\`npm run bench:proxy\`)

${machineLine()}

The upstream (test/bench/upstream-server.ts) is a bare node:http server standing in for an
embeddings API: for \`POST ${CALL}\` (a JSON body of ${Buffer.byteLength(BODY)} bytes) it checks the bearer key, reads
the body to its end and answers a fixed JSON body. This process calls it directly with the
upstream's key, and through a broker (\`jit broker start\`, SQLite store) at
\`<broker>/proxy/models${CALL}\` with the \`MODELS_API_KEY\` of one grant on \`models:POST ${CALL}\`.
The upstream, the broker and this client are three processes on loopback, each client target with a
keep-alive agent. Through the proxy, each call is also: the grant looked up by its key, the scope's
\`METHOD /path\` patterns checked, the key swapped for the upstream secret, the response piped
through the secret redactor, one \`data.call\` audit event written (after the response), and a
second loopback hop. Rounds alternate between the two (and which goes first), after a warm-up of
each; each table gives the median round and, in brackets, the slowest and fastest. "Added" is the
proxy's figure minus the direct one in the same round, the median over rounds.

### ${CONCURRENCY} requests in flight, ${ROUNDS} rounds of ${REQUESTS.toLocaleString('en')} calls

${table(loaded)}

The proxy's requests/s against the upstream's alone: ${percent(median(shares))} (rounds ${range(
    shares.map((share) => share * 100),
    1,
  )}%).
Added latency at the median (target: under ${ADDED_P50_TARGET_MS} ms): ${median(loadedP50).toFixed(3)} ms (${verdict(loadedP50)}).
With ${CONCURRENCY} calls in flight the broker is the bottleneck (one event loop; the client, the broker
and the upstream share this machine's cores), so a call's latency through it is mostly its wait
behind the others in flight: the added latency here is the broker's cost per call several times
over, and says as much about its throughput as about its latency.

### One request at a time, ${ROUNDS} rounds of ${SERIAL_REQUESTS.toLocaleString('en')} calls

What one job calling the API sees with nothing else in flight.

${table(serial)}

Added latency at the median (target: under ${ADDED_P50_TARGET_MS} ms): ${median(serialP50).toFixed(3)} ms (${verdict(serialP50)}).

### Where the proxy's time goes

One more round of ${REQUESTS.toLocaleString('en')} calls at ${CONCURRENCY} in flight against the broker under \`node --cpu-prof\`
(profiling slows it): ${profile.busyMs.toFixed(0)} ms busy, ${(profile.busyMs / REQUESTS).toFixed(3)} ms a call. Busy time by the innermost
jit function on the stack (time in Node, Fastify or SQLite counts for the jit function that called it),
by file: ${profile.byJitFile.map((share) => `${share.label.replace(/^\//, '')} ${percent(share.share)}`).join(', ')}; by function:

| share | where |
| --- | --- |
${shareRows(profile.byJitFrame)}

Busy time by the function running (self time):

| share | function |
| --- | --- |
${shareRows(profile.bySelf)}

The timed rounds took ${measureSeconds.toFixed(0)} s. Reproduce: \`npm run bench:proxy\` (\`JIT_BENCH_REQUESTS\`,
\`JIT_BENCH_ROUNDS\`, \`JIT_BENCH_CONCURRENCY\`, \`JIT_BENCH_SERIAL_REQUESTS\`).
`;
}

const markdown = report(await run());
await writeSection('proxy', markdown);
process.stdout.write(markdown);
