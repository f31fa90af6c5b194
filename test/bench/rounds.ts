// What bench:gateway and bench:proxy share around their measurements: rounds that alternate
// between a baseline and the broker, the grant the broker side uses, the broker under
// `node --cpu-prof` with its profile cut to the measured window, and the report's figures.
import { readdirSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { IssuedGrant } from '../../src/core/grant.ts';
import { BIN } from '../helpers/cli.ts';
import { type ProfileSummary, type Share, summarizeProfile } from './profile.ts';
import { stats } from './report.ts';
import { type Server, startServer, stopServer } from './servers.ts';

/** Rounds that alternate between the two targets, and which goes first, so that a burst of load falls on both. */
export async function alternate<Target, Result>(
  rounds: number,
  targets: [Target, Target],
  measure: (target: Target) => Promise<Result>,
): Promise<[Result[], Result[]]> {
  const results: [Result[], Result[]] = [[], []];
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? [0, 1] : [1, 0];
    for (const index of order) results[index as 0 | 1].push(await measure(targets[index as 0 | 1]));
  }
  return results;
}

/** A keep-alive client to one server, with at most `sockets` connections. */
export function keepAlive(server: Server, sockets: number): { port: number; agent: http.Agent } {
  return { port: Number(new URL(server.url).port), agent: new http.Agent({ keepAlive: true, maxSockets: sockets }) };
}

/** A grant from the broker's API, as `jit request` would get one (no heartbeat: nothing keeps it alive). */
export async function issueGrant(broker: Server, token: string, scopes: string[], reason: string): Promise<IssuedGrant> {
  const response = await fetch(`${broker.url}/v1/grants`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ scopes, reason, heartbeat: false }),
  });
  if (response.status !== 201) throw new Error(`POST /v1/grants: HTTP ${response.status}: ${await response.text()}`);
  return (await response.json()) as IssuedGrant;
}

/**
 * A broker on `brokerDir` under `node --cpu-prof`; `work` runs against it and returns the windows
 * (ms since the spawn) to summarize. Each window's edges are trimmed: the profile starts as the
 * process does, a little after the spawn.
 */
export async function profileBroker<Windows extends Record<string, [number, number]>>(
  options: { brokerDir: string; env: NodeJS.ProcessEnv; profileDir: string; port: number },
  work: (server: Server, sinceSpawn: () => number) => Promise<Windows>,
): Promise<{ [Name in keyof Windows]: ProfileSummary }> {
  const spawned = performance.now();
  const server = await startServer(
    'broker under --cpu-prof',
    [
      '--cpu-prof',
      '--cpu-prof-dir',
      options.profileDir,
      BIN,
      'broker',
      'start',
      '--dir',
      options.brokerDir,
      '--port',
      String(options.port),
    ],
    options.env,
  );
  let windows: Windows;
  try {
    windows = await work(server, () => performance.now() - spawned);
  } finally {
    await stopServer(server);
  }
  const [file] = readdirSync(options.profileDir).filter((name) => name.endsWith('.cpuprofile'));
  if (!file) throw new Error(`no CPU profile in ${options.profileDir}`);
  const summaries: Partial<Record<keyof Windows, ProfileSummary>> = {};
  for (const [name, [fromMs, toMs]] of Object.entries(windows) as [keyof Windows, [number, number]][]) {
    summaries[name] = await summarizeProfile(path.join(options.profileDir, file), { fromMs: fromMs + 50, toMs: toMs - 50 });
  }
  return summaries as { [Name in keyof Windows]: ProfileSummary };
}

export const median = (values: number[]) => stats(values).median;
export const percent = (share: number) => `${(share * 100).toFixed(1)}%`;
/** The smallest and largest value, to `digits` places, as "low–high" (or with another separator). */
export const range = (values: number[], digits: number, separator = '–') =>
  `${Math.min(...values).toFixed(digits)}${separator}${Math.max(...values).toFixed(digits)}`;
export const shareRows = (shares: Share[]) =>
  shares.map((share) => `| ${percent(share.share)} | ${share.label.replaceAll('|', '\\|')} |`).join('\n');
