// `npm run bench:gateway`: GETs through the broker's S3 gateway against a bare node:http static
// file server on the same files, in one run (issue 4, "Measured"): a 256 MiB object (throughput)
// and 10,000 small objects (requests/s, latency). Both servers run as processes of their own on
// loopback; this process is the client and signs every gateway request before the clock starts.
// Then one more pass against a broker under `node --cpu-prof`, to say where its time goes.
// Targets: large-object throughput at least 80% of the bare server's; authorization overhead
// (gateway time per request minus the bare server's) under 0.2 ms. Written to docs/benchmarks.md.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { DatabaseSync } from 'node:sqlite';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type { IssuedGrant } from '../../src/core/grant.ts';
import { ROOT, testEnv } from '../helpers/cli.ts';
import type { ProfileSummary } from './profile.ts';
import { machineLine, ms, stats, writeSection } from './report.ts';
import { alternate, issueGrant, keepAlive, median, percent, profileBroker, range, shareRows } from './rounds.ts';
import { initBrokerDir, type Server, startBroker, startServer, stopServer } from './servers.ts';

const LARGE_MIB = Number(process.env.JIT_BENCH_LARGE_MIB ?? 256);
const SMALL_OBJECTS = Number(process.env.JIT_BENCH_SMALL_OBJECTS ?? 10_000);
const SMALL_BYTES = 1024;
const LARGE_ROUNDS = Number(process.env.JIT_BENCH_LARGE_ROUNDS ?? 7);
const SMALL_ROUNDS = Number(process.env.JIT_BENCH_SMALL_ROUNDS ?? 5);
const CONCURRENCY = Number(process.env.JIT_BENCH_CONCURRENCY ?? 8);
const THROUGHPUT_TARGET = 0.8;
const OVERHEAD_TARGET_MS = 0.2;

const LARGE_KEY = 'bench/large.bin';
const smallKey = (index: number) => `bench/small/${String(index).padStart(5, '0')}.bin`;

/** A server under test: where to send each request (path and query, already signed for the gateway). */
type Target = { name: string; server: Server; port: number; agent: http.Agent; largePath: string; smallPaths: string[] };
type SmallRound = { perSecond: number; msPerRequest: number; cpuMsPerRequest: number; latencies: Float64Array };
type LargeRound = { mbPerSecond: number; cpuMsPerGiB: number };

/** The resource root: one object of LARGE_MIB MiB and SMALL_OBJECTS of 1 KiB, cut from one random MiB. */
async function writeObjects(root: string): Promise<void> {
  const random = new Uint8Array(1 << 20);
  crypto.getRandomValues(random.subarray(0, 65_536));
  for (let offset = 65_536; offset < random.length; offset += 65_536) crypto.getRandomValues(random.subarray(offset, offset + 65_536));
  await mkdir(path.join(root, 'bench', 'small'), { recursive: true });
  const large = await open(path.join(root, LARGE_KEY), 'w');
  for (let mib = 0; mib < LARGE_MIB; mib++) await large.write(random);
  await large.close();
  for (let first = 0; first < SMALL_OBJECTS; first += 256) {
    const batch = Array.from({ length: Math.min(256, SMALL_OBJECTS - first) }, (_, offset) => first + offset);
    await Promise.all(
      batch.map((index) => {
        const at = (index * SMALL_BYTES) % random.length;
        return writeFile(path.join(root, smallKey(index)), random.subarray(at, at + SMALL_BYTES));
      }),
    );
  }
}

/** Presigned GET URLs (path and query) for every object, signed with the grant's S3 keys as a job's SDK would. */
async function presign(grant: IssuedGrant, keys: string[]): Promise<{ paths: string[]; msPerUrl: number }> {
  const s3 = new S3Client({
    endpoint: grant.env.AWS_ENDPOINT_URL,
    region: grant.env.AWS_REGION,
    forcePathStyle: true,
    credentials: {
      accessKeyId: grant.env.AWS_ACCESS_KEY_ID ?? '',
      secretAccessKey: grant.env.AWS_SECRET_ACCESS_KEY ?? '',
      sessionToken: grant.env.AWS_SESSION_TOKEN,
    },
  });
  const begun = performance.now();
  const paths: string[] = [];
  for (const key of keys) {
    const url = new URL(await getSignedUrl(s3, new GetObjectCommand({ Bucket: 'datasets', Key: key }), { expiresIn: 3600 }));
    paths.push(`${url.pathname}${url.search}`);
  }
  return { paths, msPerUrl: (performance.now() - begun) / keys.length };
}

/** One GET on a keep-alive connection; the body's length, read to the end. */
function get(target: Target, requestPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = http.get({ agent: target.agent, host: '127.0.0.1', port: target.port, path: requestPath }, (response) => {
      let bytes = 0;
      response.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
      });
      response.once('error', reject);
      response.once('end', () => {
        if (response.statusCode === 200) resolve(bytes);
        else reject(new Error(`${target.name}: HTTP ${response.statusCode} for ${requestPath.split('?')[0]}`));
      });
    });
    request.once('error', reject);
  });
}

const TICKS_PER_SECOND = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU time (user + system, all threads) the process has used, from /proc; NaN where there is no /proc. */
function cpuMs(server: Server): number {
  try {
    const stat = readFileSync(`/proc/${server.child.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
  } catch {
    return Number.NaN;
  }
}

async function largeRound(target: Target): Promise<LargeRound> {
  const cpuBefore = cpuMs(target.server);
  const begun = performance.now();
  const bytes = await get(target, target.largePath);
  const seconds = (performance.now() - begun) / 1000;
  if (bytes !== LARGE_MIB << 20) throw new Error(`${target.name}: ${bytes} bytes of the large object, not ${LARGE_MIB << 20}`);
  return { mbPerSecond: bytes / 1e6 / seconds, cpuMsPerGiB: ((cpuMs(target.server) - cpuBefore) * 1024) / LARGE_MIB };
}

/** Every small object once, CONCURRENCY requests in flight (closed loop). */
async function smallRound(target: Target, count = target.smallPaths.length): Promise<SmallRound> {
  const latencies = new Float64Array(count);
  let next = 0;
  const cpuBefore = cpuMs(target.server);
  const begun = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let index = next++; index < count; index = next++) {
        const sent = performance.now();
        const bytes = await get(target, target.smallPaths[index] ?? '');
        latencies[index] = performance.now() - sent;
        if (bytes !== SMALL_BYTES) throw new Error(`${target.name}: ${bytes} bytes of a small object, not ${SMALL_BYTES}`);
      }
    }),
  );
  const elapsed = performance.now() - begun;
  return {
    perSecond: (count * 1000) / elapsed,
    msPerRequest: elapsed / count,
    cpuMsPerRequest: (cpuMs(target.server) - cpuBefore) / count,
    latencies,
  };
}

function target(name: string, server: Server, largePath: string, smallPaths: string[]): Target {
  return { name, server, ...keepAlive(server, CONCURRENCY), largePath, smallPaths };
}

type Profiled = { small: ProfileSummary; large: ProfileSummary; largeGets: number };

/** A broker under `node --cpu-prof`: one pass of the small objects, then two GETs of the large one; its profile of each. */
async function profileGateway(
  brokerDir: string,
  env: NodeJS.ProcessEnv,
  profileDir: string,
  port: number,
  largePath: string,
  paths: string[],
): Promise<Profiled> {
  const largeGets = 2;
  // The same port as the measured broker's: the presigned URLs signed its host and port.
  const profile = await profileBroker({ brokerDir, env, profileDir, port }, async (server, sinceSpawn) => {
    const profiled = target('broker under --cpu-prof', server, largePath, paths);
    try {
      const smallFrom = sinceSpawn();
      await smallRound(profiled);
      const smallTo = sinceSpawn();
      for (let get = 0; get < largeGets; get++) await largeRound(profiled);
      return { small: [smallFrom, smallTo] as [number, number], large: [smallTo, sinceSpawn()] as [number, number] };
    } finally {
      profiled.agent.destroy();
    }
  });
  return { ...profile, largeGets };
}

/** Audit events the broker recorded for the grant, by type (read from its SQLite store after it stopped). */
function auditCounts(brokerDir: string, grantId: string): Map<string, number> {
  const db = new DatabaseSync(path.join(brokerDir, 'broker.db'), { readOnly: true });
  try {
    const rows = db.prepare('SELECT type, count(*) AS n FROM events WHERE grant_id = ? GROUP BY type').all(grantId) as {
      type: string;
      n: number;
    }[];
    return new Map(rows.map((row) => [row.type, Number(row.n)]));
  } finally {
    db.close();
  }
}

const pooled = (rounds: SmallRound[]) => stats(rounds.flatMap((round) => [...round.latencies]));

/** Untracked files under src/ (git status does not count them as changes, but they are what ran). */
function untrackedSources(): string[] {
  try {
    const status = execFileSync('git', ['status', '--porcelain', '--untracked-files=all', '--', 'src'], { cwd: ROOT, encoding: 'utf8' });
    return status
      .split('\n')
      .filter((line) => line.startsWith('?? '))
      .map((line) => line.slice(3));
  } catch {
    return [];
  }
}

async function run(): Promise<string> {
  const workdir = await mkdtemp(path.join(tmpdir(), 'jit-bench-gateway-'));
  const env = await testEnv();
  const servers: Server[] = [];
  const targets: Target[] = [];
  try {
    const brokerDir = path.join(workdir, 'broker');
    const token = await initBrokerDir(brokerDir, env);
    const root = path.join(brokerDir, 'data', 'datasets');
    const written = performance.now();
    await writeObjects(root);
    const writeSeconds = (performance.now() - written) / 1000;

    const staticServer = await startServer('static server', [path.join(ROOT, 'test/bench/static-server.ts'), root], env);
    servers.push(staticServer);
    const broker = await startBroker('broker', brokerDir, env);
    servers.push(broker);
    const grant = await issueGrant(broker, token, ['datasets/bench'], 'bench:gateway');
    const keys = [LARGE_KEY, ...Array.from({ length: SMALL_OBJECTS }, (_, index) => smallKey(index))];
    const signed = await presign(grant, keys);
    const [largeSigned = '', ...smallSigned] = signed.paths;
    const baseline = target(
      'bare node:http static server',
      staticServer,
      `/${LARGE_KEY}`,
      keys.slice(1).map((key) => `/${key}`),
    );
    const gateway = target('jit S3 gateway (presigned GET)', broker, largeSigned, smallSigned);
    targets.push(baseline, gateway);
    const pair: [Target, Target] = [baseline, gateway];

    // Warm-up: the page cache, both servers' JIT, connections.
    for (const each of pair) {
      await largeRound(each);
      await smallRound(each, Math.min(1000, SMALL_OBJECTS));
    }
    const measured = performance.now();
    const [baseLarge, gateLarge] = await alternate(LARGE_ROUNDS, pair, largeRound);
    const [baseSmall, gateSmall] = await alternate(SMALL_ROUNDS, pair, smallRound);
    const measureSeconds = (performance.now() - measured) / 1000;
    for (const each of targets) each.agent.destroy();
    await stopServer(broker);

    const profileDir = path.join(workdir, 'profile');
    const profile = await profileGateway(brokerDir, env, profileDir, gateway.port, largeSigned, smallSigned);
    const audit = auditCounts(brokerDir, grant.id);
    const gatewayRequests =
      1 + Math.min(1000, SMALL_OBJECTS) + LARGE_ROUNDS + SMALL_ROUNDS * SMALL_OBJECTS + SMALL_OBJECTS + profile.largeGets;
    return report({
      baseLarge,
      gateLarge,
      baseSmall,
      gateSmall,
      profile,
      msPerUrl: signed.msPerUrl,
      writeSeconds,
      measureSeconds,
      audit,
      gatewayRequests,
    });
  } finally {
    for (const each of targets) each.agent.destroy();
    for (const server of servers) await stopServer(server);
    await rm(workdir, { recursive: true, force: true });
    if (env.HOME) await rm(env.HOME, { recursive: true, force: true });
  }
}

type Figures = {
  baseLarge: LargeRound[];
  gateLarge: LargeRound[];
  baseSmall: SmallRound[];
  gateSmall: SmallRound[];
  profile: Profiled;
  msPerUrl: number;
  writeSeconds: number;
  measureSeconds: number;
  audit: Map<string, number>;
  gatewayRequests: number;
};

function verdict(met: boolean, values: number[], meets: (value: number) => boolean): string {
  const settled = values.every(meets) || !values.some(meets);
  return `${met ? 'met' : '**not met**'}${settled ? '' : '; rounds fall on both sides of the target: this run does not settle it'}`;
}

function report(figures: Figures): string {
  const { baseLarge, gateLarge, baseSmall, gateSmall } = figures;
  const profile = figures.profile.small;
  const large = figures.profile.large;
  const events = [...figures.audit].map(([type, count]) => `${count.toLocaleString('en')} \`${type}\``).join(', ');
  const shares = gateLarge.map((round, index) => round.mbPerSecond / (baseLarge[index]?.mbPerSecond ?? Number.NaN));
  const share = median(shares);
  const overheads = gateSmall.map((round, index) => round.msPerRequest - (baseSmall[index]?.msPerRequest ?? Number.NaN));
  const overhead = median(overheads);
  const cpuOverheads = gateSmall.map((round, index) => round.cpuMsPerRequest - (baseSmall[index]?.cpuMsPerRequest ?? Number.NaN));
  const cpuOverhead = median(cpuOverheads);
  const largeRow = (name: string, rounds: LargeRound[]) =>
    `| ${name} | ${median(rounds.map((r) => r.mbPerSecond)).toFixed(0)} (${range(
      rounds.map((r) => r.mbPerSecond),
      0,
    )}) | ${median(rounds.map((r) => r.cpuMsPerGiB)).toFixed(0)} ms |`;
  const smallRow = (name: string, rounds: SmallRound[]) => {
    const latency = pooled(rounds);
    return `| ${name} | ${median(rounds.map((r) => r.perSecond)).toFixed(0)}/s (${range(
      rounds.map((r) => r.perSecond),
      0,
    )}) | ${median(rounds.map((r) => r.msPerRequest)).toFixed(3)} ms | ${median(rounds.map((r) => r.cpuMsPerRequest)).toFixed(3)} ms | ${ms(latency.median)} | ${ms(latency.p99)} |`;
  };
  const missing = figures.gatewayRequests - (figures.audit.get('data.read') ?? 0);
  const unaudited = missing === 0 ? '' : `: **${missing} ${missing === 1 ? 'GET' : 'GETs'} served without a \`data.read\` event**`;
  const untracked = untrackedSources();
  const untrackedNote = untracked.length
    ? ` Files under src/ not yet committed were part of what ran: ${untracked.map((file) => `\`${file}\``).join(', ')}.`
    : '';
  const profiledPerRequest = profile.busyMs / SMALL_OBJECTS;
  return `## S3 gateway (\`npm run bench:gateway\`)

${machineLine()}${untrackedNote}

A broker (\`jit broker start\`, SQLite store) serves a files resource whose root holds one object of
${LARGE_MIB} MiB and ${SMALL_OBJECTS.toLocaleString('en')} objects of ${SMALL_BYTES} bytes under \`bench/small/\`; the baseline, a bare node:http
server (test/bench/static-server.ts: \`stat\` for content-length, then \`fs.createReadStream\`; no
authentication, audit, ETag or ranges), serves the same files from the same directory. Each server is
a process of its own; this process is the client (node:http, keep-alive agent), over loopback.
Gateway requests are presigned GET URLs (\`@aws-sdk/s3-request-presigner\` \`getSignedUrl\`, with the
S3 keys of one read grant on \`datasets/bench\`, path-style), all signed before the first timed request:
${figures.msPerUrl.toFixed(2)} ms a URL on the client, not counted. The gateway verifies each one in full
(SigV4 with the session token, grant lookup, scope check, an audit event). Rounds alternate between
the two servers (and which goes first), after a warm-up of each; the median round and, in brackets,
the slowest and fastest. Server CPU is the server process's user + system time over the round
(/proc, all threads).

### One ${LARGE_MIB} MiB object, ${LARGE_ROUNDS} rounds

| server | MB/s (10^6 bytes) | server CPU per GiB |
| --- | --- | --- |
${largeRow('bare node:http static server', baseLarge)}
${largeRow('jit S3 gateway (presigned GET)', gateLarge)}

The gateway's throughput against the bare server's, the median over rounds of the gateway's MB/s over
the bare server's in the same round (target: at least ${percent(THROUGHPUT_TARGET)}): ${percent(share)}, rounds ${percent(Math.min(...shares))}–${percent(Math.max(...shares))}
(${verdict(share >= THROUGHPUT_TARGET, shares, (value) => value >= THROUGHPUT_TARGET)}).

### ${SMALL_OBJECTS.toLocaleString('en')} objects of ${SMALL_BYTES} bytes, ${CONCURRENCY} requests in flight, ${SMALL_ROUNDS} rounds

Each round GETs every object once.

| server | requests/s | time per request (round time / requests) | server CPU per request | latency p50 | latency p99 |
| --- | --- | --- | --- | --- | --- |
${smallRow('bare node:http static server', baseSmall)}
${smallRow('jit S3 gateway (presigned GET)', gateSmall)}

Authorization overhead per request, the median over rounds of the gateway's time per request minus
the bare server's in the same round (target: under ${OVERHEAD_TARGET_MS} ms): ${overhead.toFixed(3)} ms, rounds ${range(overheads, 3)} ms
(${verdict(overhead < OVERHEAD_TARGET_MS, overheads, (value) => value < OVERHEAD_TARGET_MS)}).
In server CPU per request, the same difference is ${cpuOverhead.toFixed(3)} ms (rounds ${range(cpuOverheads, 3)} ms).
With ${CONCURRENCY} requests in flight on a machine this size, time per request is the server's cost per
request, not a caller's wait (that is the latency columns).

What the difference holds: everything the gateway does for a GET that the bare server does not, not
only authorization. SigV4 verification of the presigned query (canonical request, SHA-256, the
signing-key HMAC chain, and the grant's S3 secret derived from the session token), the grant lookup
by the SHA-256 of the session token (one SQLite SELECT), the scope and key checks, one audit event
written per request (one SQLite INSERT, after the response), and the gateway's S3 response
(Fastify routing, ETag from the object's sidecar directory, Last-Modified, conditional-request
checks, the stream tracked so that revocation can cut it). Audit events the broker recorded for the
grant: ${events || 'none'}, for the ${figures.gatewayRequests.toLocaleString('en')} GETs it served in this run (the grant's issue is one more)${unaudited}.

### Where the gateway's time goes

One more pass of the ${SMALL_OBJECTS.toLocaleString('en')} small objects against the broker under \`node --cpu-prof\`
(profiling slows it): ${profile.busyMs.toFixed(0)} ms busy, ${profiledPerRequest.toFixed(3)} ms a request. Busy time by the innermost
jit function on the stack (time in Node, Fastify or SQLite counts for the jit function that called it),
by file: ${profile.byJitFile.map((share) => `${share.label.replace(/^\//, '')} ${percent(share.share)}`).join(', ')}; by function:

| share | where |
| --- | --- |
${shareRows(profile.byJitFrame)}

Busy time by the function running (self time):

| share | function |
| --- | --- |
${shareRows(profile.bySelf)}

The large object under the same profiler (${figures.profile.largeGets} GETs, ${large.busyMs.toFixed(0)} ms busy), by file:
${large.byJitFile.map((share) => `${share.label.replace(/^\//, '')} ${percent(share.share)}`).join(', ')}; the top functions by
self time: ${large.bySelf
    .slice(0, 5)
    .map((share) => `${share.label} ${percent(share.share)}`)
    .join(', ')}.

Objects written in ${figures.writeSeconds.toFixed(1)} s; the timed rounds took ${figures.measureSeconds.toFixed(0)} s.
Reproduce: \`npm run bench:gateway\` (\`JIT_BENCH_LARGE_MIB\`, \`JIT_BENCH_SMALL_OBJECTS\`,
\`JIT_BENCH_LARGE_ROUNDS\`, \`JIT_BENCH_SMALL_ROUNDS\`, \`JIT_BENCH_CONCURRENCY\`).
`;
}

const markdown = await run();
await writeSection('gateway', markdown);
process.stdout.write(markdown);
