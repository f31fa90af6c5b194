// Load for `npm run bench:broker`: a closed loop for throughput, an open loop for latency at a
// fixed rate. Bounded in count and time, on loopback.
import { performance } from 'node:perf_hooks';
import { type Stats, stats } from './report.ts';

export type Target = { name: string; url: string; path: string; headers: Record<string, string>; body: string };

async function call(target: Target): Promise<number> {
  const begun = performance.now();
  const response = await fetch(`${target.url}${target.path}`, { method: 'POST', headers: target.headers, body: target.body });
  await response.arrayBuffer();
  if (response.status !== 201) throw new Error(`${target.name}: HTTP ${response.status}`);
  return performance.now() - begun;
}

/** Closed loop: `concurrency` callers back to back for `seconds`; completed calls per second. */
export async function throughput(target: Target, options: { concurrency: number; seconds: number }): Promise<number> {
  const deadline = performance.now() + options.seconds * 1000;
  let completed = 0;
  await Promise.all(
    Array.from({ length: options.concurrency }, async () => {
      while (performance.now() < deadline) {
        await call(target);
        completed++;
      }
    }),
  );
  return completed / options.seconds;
}

/** Open loop: `rate` calls a second for `seconds`, sent on schedule whatever the answers do; latencies. */
export async function latencyAtRate(target: Target, options: { rate: number; seconds: number }): Promise<Stats> {
  const total = options.rate * options.seconds;
  const begun = performance.now();
  const calls: Promise<number>[] = [];
  for (let index = 0; index < total; index++) {
    const due = begun + (index * 1000) / options.rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    calls.push(call(target));
  }
  return stats(await Promise.all(calls));
}
