import { type ChildProcess, spawn } from 'node:child_process';
import type { Context } from '../cli/context.ts';
import type { BrokerClient } from '../client/broker-client.ts';
import { currentWrapper, releaseOrDefer } from '../client/release.ts';
import { ConflictError, ExitCode, JitError, UsageError } from '../core/errors.ts';
import type { IssuedGrant } from '../core/grant.ts';
import { formatScope, parseScope } from '../core/scope.ts';
import { accounts, type SecretStore } from '../secrets/store.ts';
import { exitCodeForSignal, inForegroundOfTerminal, RELAYED_SIGNALS, shouldRelay } from './signals.ts';

export type RunOptions = {
  scopes: string[];
  ttlSeconds: number | undefined;
  reason: string | undefined;
  command: string[];
  killAfterMs: number;
};

type ChildOutcome = { code: number | null; signal: NodeJS.Signals | null } | { spawnError: NodeJS.ErrnoException };

/**
 * `jit run`: request a grant, keep its credential in the keychain, run the command with the
 * credential in its environment, heartbeat while it lives, relay signals, and on every way out
 * revoke the grant and wipe the credential. Resolves to the exit status jit should end with.
 */
export async function runUnderGrant(ctx: Context, options: RunOptions): Promise<number> {
  const [program, ...args] = options.command;
  if (!program) {
    throw new UsageError('no command to run', { hint: 'put it after --, e.g. jit run --scope datasets/train -- python train.py' });
  }
  const scopes = options.scopes.map((text) => formatScope(parseScope(text)));
  const { client, profile, brokerUrl, auth } = await ctx.session();
  const secrets = await ctx.secrets();

  const signals = new SignalRelay();
  try {
    const spinner = ctx.out.spinner(`requesting access to ${scopes.join(', ')}`);
    let grant: IssuedGrant;
    try {
      grant = await client.requestGrant({ scopes, ttlSeconds: options.ttlSeconds, reason: options.reason });
    } catch (error) {
      spinner.fail('grant refused');
      throw error;
    }
    spinner.succeed(`grant ${grant.id} issued`);
    ctx.out.info(`grant ${grant.id} issued for ${grant.scopes.join(', ')}, expires ${grant.expiresAt}`);

    const cleanup = once(() => finish(ctx, { client, secrets, grantId: grant.id }));
    try {
      ctx.config.putGrant({
        id: grant.id,
        profile,
        brokerUrl,
        auth,
        scopes: grant.scopes,
        pid: process.pid,
        wrapper: currentWrapper(),
        command: describeCommand(options.command),
        createdAt: grant.createdAt,
        expiresAt: grant.expiresAt,
        state: 'active',
      });
      await secrets.set(accounts.grant(grant.id), grant.credential);
      if (signals.received) return exitCodeForSignal(signals.received);

      const heartbeat = startHeartbeat(ctx, client, grant);
      const outcome = await runChild(program, args, childEnvironment(ctx.env, grant), signals, options.killAfterMs);
      heartbeat.stop();
      return exitStatus(ctx, program, outcome);
    } finally {
      await cleanup();
    }
  } finally {
    signals.dispose();
  }
}

/** The child's environment: the parent's, minus every JIT_* of jit's own, plus the grant's. */
export function childEnvironment(parentEnv: NodeJS.ProcessEnv, grant: IssuedGrant): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(parentEnv)) if (!name.startsWith('JIT_')) env[name] = value;
  return { ...env, ...grant.env, JIT_GRANT_ID: grant.id, JIT_EXPIRES_AT: grant.expiresAt };
}

function exitStatus(ctx: Context, program: string, outcome: ChildOutcome): number {
  if ('spawnError' in outcome) {
    const { code } = outcome.spawnError;
    if (code === 'ENOENT') {
      ctx.out.error(
        new JitError(`command not found: ${program}`, ExitCode.commandNotFound, 500, 'command_not_found', {
          hint: 'check the name and your PATH',
        }),
      );
      return ExitCode.commandNotFound;
    }
    ctx.out.error(
      new JitError(`cannot run ${program} (${code ?? outcome.spawnError.message})`, ExitCode.cannotRun, 500, 'cannot_run', {
        hint: 'check that it is an executable file',
      }),
    );
    return ExitCode.cannotRun;
  }
  if (outcome.signal) return exitCodeForSignal(outcome.signal);
  return outcome.code ?? ExitCode.unexpected;
}

/** Revoke with retries; wipe the keychain entry whatever happens; keep a revoke-pending index entry if the broker never answered. */
async function finish(ctx: Context, deps: { client: BrokerClient; secrets: SecretStore; grantId: string }): Promise<void> {
  const { grantId } = deps;
  // The client retries a revocation that cannot reach the broker (or meets a 5xx) with back-off.
  const outcome = await releaseOrDefer(grantId, { client: deps.client, config: ctx.config, secrets: deps.secrets });
  if ('error' in outcome) {
    ctx.out.warn(
      `could not revoke grant ${grantId} (${outcome.error.message}); it lapses on the broker without heartbeats, and the next jit command retries the revocation`,
    );
    return;
  }
  const { receipt } = outcome;
  ctx.out.info(receipt.alreadyEnded ? `grant ${grantId} had already ended (${receipt.state})` : `grant ${grantId} revoked`);
}

function startHeartbeat(ctx: Context, client: BrokerClient, grant: IssuedGrant): { stop(): void } {
  let inFlight = false;
  let ended = false;
  const timer = setInterval(async () => {
    if (inFlight || ended) return;
    inFlight = true;
    try {
      await client.heartbeat(grant.id);
    } catch (error) {
      if (ended) return;
      if (error instanceof ConflictError) {
        ended = true;
        ctx.out.warn(`${error.message}: the job's access has ended`);
      } else {
        ctx.out.info(`heartbeat for ${grant.id} failed: ${(error as Error).message}`);
      }
    } finally {
      inFlight = false;
    }
  }, grant.heartbeatIntervalSeconds * 1000);
  timer.unref();
  return {
    // A heartbeat still in flight may come back "revoked" after cleanup: that is not news.
    stop: () => {
      ended = true;
      clearInterval(timer);
    },
  };
}

function runChild(
  program: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  signals: SignalRelay,
  killAfterMs: number,
): Promise<ChildOutcome> {
  return new Promise((resolve) => {
    const child = spawn(program, args, { stdio: 'inherit', env });
    child.once('error', (error: NodeJS.ErrnoException) => {
      if (child.pid === undefined) resolve({ spawnError: error });
    });
    child.once('exit', (code, signal) => resolve({ code, signal }));
    signals.attach(child, killAfterMs);
  });
}

/**
 * Catches SIGINT/SIGTERM/SIGHUP from the moment `jit run` starts, so jit is never killed before it
 * can revoke, and relays them to the child exactly once: a signal the terminal already sent to
 * the whole foreground group is not sent again. The first one starts the grace period, after
 * which the child gets SIGKILL.
 *
 * While it runs it is the only listener for those signals: conf (through atomically) loads
 * when-exit, whose listener sends the first signal back to this process with process.kill even
 * when others listen, so jit would relay it twice. The listeners it sets aside come back on
 * dispose; their exit-time cleanup still runs on the 'exit' event when jit ends normally.
 */
class SignalRelay {
  received: NodeJS.Signals | undefined;
  #child: ChildProcess | undefined;
  #killAfterMs = 10_000;
  #killTimer: NodeJS.Timeout | undefined;
  readonly #handlers = new Map<NodeJS.Signals, () => void>();
  readonly #setAside = new Map<NodeJS.Signals, ((...args: unknown[]) => void)[]>();

  constructor() {
    for (const signal of RELAYED_SIGNALS) {
      this.#setAside.set(signal, process.rawListeners(signal) as ((...args: unknown[]) => void)[]);
      process.removeAllListeners(signal);
      const handler = () => this.#onSignal(signal);
      this.#handlers.set(signal, handler);
      process.on(signal, handler);
    }
  }

  attach(child: ChildProcess, killAfterMs: number): void {
    this.#child = child;
    this.#killAfterMs = killAfterMs;
    child.once('exit', () => clearTimeout(this.#killTimer));
    if (this.received) this.#onSignal(this.received);
  }

  dispose(): void {
    clearTimeout(this.#killTimer);
    for (const [signal, handler] of this.#handlers) process.off(signal, handler);
    for (const [signal, listeners] of this.#setAside) for (const listener of listeners) process.on(signal, listener);
  }

  #onSignal(signal: NodeJS.Signals): void {
    this.received ??= signal;
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    if (shouldRelay(signal, inForegroundOfTerminal())) child.kill(signal);
    this.#killTimer ??= setTimeout(() => child.kill('SIGKILL'), this.#killAfterMs);
  }
}

function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | undefined;
  return () => (result ??= fn());
}

/** The command as the local index shows it; long argument lists are cut. */
function describeCommand(command: string[]): string {
  const text = command.join(' ');
  return text.length > 120 ? `${text.slice(0, 117)}...` : text;
}
