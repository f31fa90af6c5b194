import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BIN = path.join(ROOT, 'bin', 'jit.js');

/** Variables a test run inherits; everything else (JIT_*, HOME, tokens) is set per test. */
const PASSED_THROUGH = ['PATH', 'DBUS_SESSION_BUS_ADDRESS', 'XDG_RUNTIME_DIR', 'LANG', 'TMPDIR', 'SYSTEMROOT'];

/** A hermetic environment: its own HOME and config dir, no colour, no inherited JIT_* variables. */
export async function testEnv(extra: Record<string, string | undefined> = {}): Promise<NodeJS.ProcessEnv> {
  const home = await mkdtemp(path.join(tmpdir(), 'jit-home-'));
  const env: NodeJS.ProcessEnv = { HOME: home, JIT_CONFIG_DIR: path.join(home, 'config'), NO_COLOR: '1' };
  for (const name of PASSED_THROUGH) if (process.env[name] !== undefined) env[name] = process.env[name];
  for (const [name, value] of Object.entries(extra)) {
    if (value === undefined) delete env[name];
    else env[name] = value;
  }
  return env;
}

export type Finished = {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
  stderrBytes: Buffer;
};

export type JitProcessOptions = {
  env: NodeJS.ProcessEnv;
  input?: string | Buffer;
  detached?: boolean;
  cwd?: string;
  /**
   * Run jit as the foreground job of a new pseudo-terminal (util-linux `script`), as a user at a
   * shell would: "\x03" written to stdin is then a real Ctrl-C, which the terminal sends to the
   * whole foreground process group. stdout is the terminal's output (jit's stdout and stderr
   * together, with CRLF line ends); `child` is `script`, and jit runs in a session of its own.
   * The terminal is `terminalColumns` (default 80) wide and 24 rows high; `script` without a
   * terminal of its own would give it no size at all (0 columns).
   */
  terminal?: boolean;
  terminalColumns?: number;
};

/** A running `bin/jit` with its output collected, for tests that talk to it while it runs. */
export class JitProcess {
  readonly child: ChildProcess;
  stdout = Buffer.alloc(0);
  stderrBytes = Buffer.alloc(0);
  readonly done: Promise<Finished>;
  readonly #waiters: { stream: 'stdout' | 'stderr'; pattern: RegExp; resolve: (match: RegExpMatchArray) => void }[] = [];

  constructor(args: string[], options: JitProcessOptions) {
    const [command, commandArgs] = options.terminal
      ? [
          'script',
          [
            '-qfec',
            `stty cols ${options.terminalColumns ?? 80} rows 24 && exec ${[process.execPath, BIN, ...args].map(shellQuote).join(' ')}`,
            '/dev/null',
          ],
        ]
      : [process.execPath, [BIN, ...args]];
    this.child = spawn(command, commandArgs, {
      env: options.env,
      cwd: options.cwd ?? ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: options.detached ?? false,
    });
    this.child.stdout?.on('data', (chunk: Buffer) => {
      this.stdout = Buffer.concat([this.stdout, chunk]);
      this.#check();
    });
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.stderrBytes = Buffer.concat([this.stderrBytes, chunk]);
      this.#check();
    });
    if (options.input !== undefined) this.child.stdin?.end(options.input);
    this.done = new Promise((resolve) => {
      this.child.on('close', (code, signal) =>
        resolve({
          code,
          signal,
          stdout: this.stdout.toString(),
          stderr: this.stderr,
          stdoutBytes: this.stdout,
          stderrBytes: this.stderrBytes,
        }),
      );
    });
  }

  get stderr(): string {
    return this.stderrBytes.toString();
  }

  /** Resolves when the stream's output so far matches; rejects after `timeoutMs` with what was seen. */
  readUntil(stream: 'stdout' | 'stderr', pattern: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
    const current = (stream === 'stdout' ? this.stdout.toString() : this.stderr).match(pattern);
    if (current) return Promise.resolve(current);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`timed out waiting for ${pattern} on ${stream}; stdout: ${this.stdout.toString()}\nstderr: ${this.stderr}`));
      }, timeoutMs);
      this.#waiters.push({
        stream,
        pattern,
        resolve: (match) => {
          clearTimeout(timer);
          resolve(match);
        },
      });
    });
  }

  /** Sends a signal to jit alone (not to the job it runs). */
  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }

  #check(): void {
    for (const waiter of [...this.#waiters]) {
      const match = (waiter.stream === 'stdout' ? this.stdout.toString() : this.stderr).match(waiter.pattern);
      if (match) {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        waiter.resolve(match);
      }
    }
  }
}

/** Runs `bin/jit` to completion. */
export function jit(args: string[], options: { env: NodeJS.ProcessEnv; input?: string | Buffer; cwd?: string }): Promise<Finished> {
  return new JitProcess(args, { ...options, input: options.input ?? '' }).done;
}

/** Kills a process group, ignoring one that is already gone (test teardown). */
export function killGroup(pid: number | undefined, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {}
}

/** Whether util-linux `script` is here to give jit a pseudo-terminal (`terminal` option). */
export function terminalAvailable(): boolean {
  return spawnSync('script', ['--version'], { stdio: 'ignore' }).status === 0;
}

function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}
