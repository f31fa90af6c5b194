import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from '../helpers/cli.ts';

const FILE = path.join(ROOT, 'docs', 'benchmarks.md');

const HEADER = `# Benchmarks

Written by the scripts in test/bench/ (\`npm run bench\`, \`npm run bench:broker\`). Every figure
is measured next to a baseline in the same run on the same machine, so the difference is what jit
adds. The machine is shared and noisy: compare rows of one run, not runs of different days. Each
section below is rewritten by its own script.
`;

export type Stats = { median: number; p95: number; p99: number; max: number };

export function stats(samples: number[]): Stats {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
  return { median: at(0.5), p95: at(0.95), p99: at(0.99), max: sorted.at(-1) ?? Number.NaN };
}

export const ms = (value: number) => `${value.toFixed(1)} ms`;

/**
 * The commit measured, with a note when tracked files differ from it; docs/benchmarks.md does not
 * count, since each section a run writes changes it before the next one is measured.
 */
function revision(): string {
  const git = (...args: string[]) => execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  try {
    const changed = git('status', '--porcelain', '--untracked-files=no', '--', '.', `:(exclude)${path.relative(ROOT, FILE)}`);
    return `${git('rev-parse', '--short', 'HEAD')}${changed ? ' with uncommitted changes' : ''}`;
  } catch {
    return 'an unknown revision';
  }
}

/** The line every section starts with: when, what, on what. */
export function machineLine(): string {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  return `Measured ${new Date().toISOString()} at ${revision()} on ${os.cpus().length} × ${cpu}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, load average ${os.loadavg()[0]?.toFixed(1)} (1 min; the machine is shared).`;
}

/** Replaces the section `name` of docs/benchmarks.md (between its markers), or appends it. */
export async function writeSection(name: string, markdown: string): Promise<void> {
  const existing = await readFile(FILE, 'utf8').catch(() => '');
  const start = `<!-- section:${name} -->`;
  const end = `<!-- /section:${name} -->`;
  const block = `${start}\n${markdown.trim()}\n${end}`;
  const body = existing.startsWith('# Benchmarks') && existing.includes('<!-- section:') ? existing : HEADER;
  const from = body.indexOf(start);
  const to = body.indexOf(end);
  const next =
    from !== -1 && to !== -1 ? `${body.slice(0, from)}${block}${body.slice(to + end.length)}` : `${body.trimEnd()}\n\n${block}\n`;
  await writeFile(FILE, next.endsWith('\n') ? next : `${next}\n`);
}
