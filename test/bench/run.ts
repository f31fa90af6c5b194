// `npm run bench`: what jit costs on top of the job, measured against a baseline in the same run,
// written to docs/benchmarks.md. Sized for a shared two-core machine: a few dozen runs each,
// medians and 95th percentiles rather than single timings.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { IssuedGrant } from '../../src/core/grant.ts';
import { openSecretStore } from '../../src/secrets/store.ts';
import { api, readGranted, startTestBroker } from '../helpers/broker.ts';
import { BIN, testEnv } from '../helpers/cli.ts';
import { machineLine, ms, type Stats, stats, writeSection } from './report.ts';

const PROCESS_RUNS = Number(process.env.JIT_BENCH_PROCESS_RUNS ?? 15);
const HTTP_RUNS = Number(process.env.JIT_BENCH_HTTP_RUNS ?? 300);

/** Runs a command to completion; async, because the broker under test lives in this process. */
function runOnce(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${command} ${args.join(' ')} failed: ${stderr}`))));
  });
}

async function timeCommand(command: string, args: string[], env: NodeJS.ProcessEnv, runs = PROCESS_RUNS): Promise<Stats> {
  await runOnce(command, args, env);
  return timeAsync(runs, () => runOnce(command, args, env));
}

async function timeAsync(runs: number, step: () => Promise<void>): Promise<Stats> {
  const samples: number[] = [];
  for (let run = 0; run < runs; run++) {
    const started = performance.now();
    await step();
    samples.push(performance.now() - started);
  }
  return stats(samples);
}

const broker = await startTestBroker({ files: { 'train/blob.bin': Buffer.alloc(1 << 20, 7).toString('latin1') } });
try {
  const keychain = await openSecretStore('auto');
  const env = await testEnv({ JIT_BROKER_URL: broker.url, JIT_TOKEN: broker.token });
  const node = process.execPath;

  const rows: [string, Stats, Stats, string][] = [];
  const bare = await timeCommand(node, ['-e', '0'], env);
  rows.push(['CLI start-up: `jit --version`', bare, await timeCommand(node, [BIN, '--version'], env), '`node -e 0`']);
  rows.push(['offline listing: `jit grants`', bare, await timeCommand(node, [BIN, 'grants'], env), '`node -e 0`']);
  const direct = await timeCommand('true', [], env);
  rows.push([
    'whole `jit run --scope datasets/train -- true` (grant, keychain, spawn, revoke)',
    direct,
    await timeCommand(node, [BIN, 'run', '--scope', 'datasets/train', '--', 'true'], env),
    '`true` alone',
  ]);

  const issueRevoke = await timeAsync(HTTP_RUNS, async () => {
    const { body } = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes: ['datasets/train'] });
    await api(broker, broker.token, 'DELETE', `grants/${body.id}`);
  });
  const health = await timeAsync(HTTP_RUNS, async () => {
    await (await fetch(`${broker.url}/v1/health`)).text();
  });
  rows.push(['broker: issue + revoke one grant over HTTP', health, issueRevoke, '`GET /v1/health` round trip']);

  const { body: grant } = await api<IssuedGrant>(broker, broker.token, 'POST', 'grants', { scopes: ['datasets/train'] });
  const blob = path.join(broker.dataDir, 'train', 'blob.bin');
  const { readFile } = await import('node:fs/promises');
  const fileRead = await timeAsync(HTTP_RUNS / 3, async () => {
    await readFile(blob);
  });
  const granted = await timeAsync(HTTP_RUNS / 3, async () => {
    const response = await readGranted(broker.url, grant.credential, 'datasets/train/blob.bin');
    if (response.status !== 200) throw new Error(`read failed: ${response.status}`);
  });
  rows.push(['files endpoint: read 1 MiB under a grant', fileRead, granted, 'local `readFile` of the same file']);

  const table = rows.map(
    ([what, baseline, measured, baselineName]) =>
      `| ${what} | ${baselineName}: ${ms(baseline.median)} | ${ms(measured.median)} (p95 ${ms(measured.p95)}) | +${ms(measured.median - baseline.median)} |`,
  );
  const report = `## The CLI and one broker (\`npm run bench\`)

${machineLine()} Keychain backend: ${keychain.backend}. Runs: ${PROCESS_RUNS} per command (after
one warm-up), ${HTTP_RUNS} per HTTP call (${HTTP_RUNS / 3} for file reads); medians.

| what | baseline | with jit (median) | added |
| --- | --- | --- | --- |
${table.join('\n')}

Reproduce: \`npm run bench\` (inside a D-Bus session with gnome-keyring for the keychain backend;
\`JIT_BENCH_PROCESS_RUNS\` and \`JIT_BENCH_HTTP_RUNS\` change the counts).
`;
  await writeSection('cli', report);
  process.stdout.write(report);
} finally {
  await broker.cleanup();
}
