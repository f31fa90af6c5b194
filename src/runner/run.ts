import { type ChildProcess, spawn } from 'node:child_process';
import type { Context } from '../cli/context.ts';
import type { BrokerClient } from '../client/broker-client.ts';
import { currentWrapper, releaseOrDefer, wrapperGone } from '../client/release.ts';
import type { LocalGrant } from '../config/local.ts';
import { describeApproval } from '../core/approval.ts';
import { BrokerUnreachableError, ConflictError, ExitCode, JitError, NotFoundError, PendingError, UsageError } from '../core/errors.ts';
import { GRANT_ID, type GrantView, type IssuedGrant } from '../core/grant.ts';
import { formatScope, parseScope } from '../core/scope.ts';
import type { SecretStore } from '../secrets/store.ts';
import { type HeldCredential, heldCredential, keepCredential } from './held.ts';
import { exitCodeForSignal, inForegroundOfTerminal, RELAYED_SIGNALS, shouldRelay } from './signals.ts';
import { endedError, waitForApproval } from './wait.ts';

export type RunOptions = {
  scopes: string[];
  /** Run under this grant (from `jit request` or `jit run --no-wait`) instead of requesting one. */
  grantId: string | undefined;
  ttlSeconds: number | undefined;
  reason: string | undefined;
  command: string[];
  killAfterMs: number;
  /** Wait for approval when the grant is pending (false: `--no-wait`, exit 9 at once). */
  wait: boolean;
  waitTimeoutMs: number | undefined;
};

/** The AWS variables that choose who the job is and where its calls go (see childEnvironment). */
const AWS_IDENTITY =
  /^AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN|SECURITY_TOKEN|PROFILE|DEFAULT_PROFILE|ROLE_ARN|ROLE_SESSION_NAME|WEB_IDENTITY_TOKEN_FILE|CONTAINER_CREDENTIALS_.*|ENDPOINT_URL.*|CREDENTIAL_EXPIRATION|S3_.*)$/;

/** libpq's connection variables (and DATABASE_URL), replaced whole for a table grant. */
const PG_IDENTITY = /^(PG[A-Z]+|DATABASE_URL)$/;

type ChildOutcome = { code: number | null; signal: NodeJS.Signals | null } | { spawnError: NodeJS.ErrnoException };

/** A grant this `jit run` holds: what the API says of it, its credential, and how to reach its broker. */
type Held = { grant: GrantView & HeldCredential; client: BrokerClient; entry: LocalGrant };

const APPROVAL_POLL_MS = 2_000;

/**
 * `jit run`: request a grant (or pick up one from `jit request`), wait for approval if it needs
 * one, keep its credential in the keychain, run the command with the credential in its
 * environment, heartbeat and renew while it lives, relay signals, and on every way out revoke
 * the grant (cancel it if still pending) and wipe the credential. Resolves to the exit status jit
 * should end with.
 */
export async function runUnderGrant(ctx: Context, options: RunOptions): Promise<number> {
  const [program, ...args] = options.command;
  if (!program) {
    throw new UsageError('no command to run', { hint: 'put it after --, e.g. jit run --scope datasets/train -- python train.py' });
  }
  if (Boolean(options.grantId) === options.scopes.length > 0) {
    throw new UsageError(options.grantId ? '--grant and --scope cannot be used together' : 'name what the job needs with --scope', {
      hint: 'jit run --scope datasets/train -- CMD requests a grant; jit run --grant ID -- CMD uses one from `jit request`',
    });
  }
  const secrets = await ctx.secrets();

  const signals = new SignalRelay();
  try {
    const held = options.grantId ? await pickUp(ctx, secrets, options.grantId, options.command) : await requestFor(ctx, secrets, options);
    const { client, entry } = held;
    let keep = false;
    const cleanup = once(() => (keep ? Promise.resolve() : finish(ctx, { client, secrets, grantId: entry.id })));
    try {
      if (signals.received) return exitCodeForSignal(signals.received);
      let grant = held.grant;
      if (grant.state === 'pending') {
        if (!options.wait) {
          // Nobody holds it now: it stays pending, and `jit run --grant` picks it up once approved.
          keep = true;
          ctx.config.putGrant({ ...entry, pid: null, wrapper: null });
          throw new PendingError(`grant ${grant.id} is waiting for approval by ${describeApproval(grant)}`, {
            hint: `once approved, run the job with \`jit run --grant ${grant.id} -- ${describeCommand(options.command)}\``,
            grantId: grant.id,
          });
        }
        try {
          const view = await waitForApproval(ctx, grant, {
            poll: pollHeld(client, grant),
            intervalMs: APPROVAL_POLL_MS,
            timeoutMs: options.waitTimeoutMs,
            signal: signals.abortSignal,
            timeoutHint: `the request is cancelled; ask ${describeApproval(grant)} to review sooner, or request ahead with \`jit request --wait\`, which keeps it pending`,
          });
          grant = { ...grant, ...view };
        } catch (error) {
          if (signals.received) return exitCodeForSignal(signals.received);
          throw error;
        }
      }
      if (grant.state !== 'active') throw endedError(grant);
      ctx.config.putGrant({ ...entry, state: 'active', expiresAt: grant.expiresAt });
      // A grant nobody held yet (jit request) starts its heartbeat clock now.
      if (grant.heartbeatDeadline === null) grant = { ...grant, ...(await client.heartbeat(grant.id)) };
      ctx.out.info(`grant ${grant.id} active for ${grant.scopes.join(', ')}, expires ${grant.expiresAt}`);

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

/** Asks the broker for a grant for this job and keeps its credential; it may come back pending. */
async function requestFor(ctx: Context, secrets: SecretStore, options: RunOptions): Promise<Held> {
  const scopes = options.scopes.map((text) => formatScope(parseScope(text)));
  const { client, profile, brokerUrl, auth } = await ctx.session();
  const spinner = ctx.out.spinner(`requesting access to ${scopes.join(', ')}`);
  let issued: IssuedGrant;
  try {
    // --no-wait leaves a pending grant for a later `jit run --grant`: its heartbeat clock waits for that.
    issued = await client.requestGrant({ scopes, ttlSeconds: options.ttlSeconds, reason: options.reason, heartbeat: options.wait });
  } catch (error) {
    spinner.fail('grant refused');
    throw error;
  }
  spinner.succeed(issued.state === 'pending' ? `grant ${issued.id} requested` : `grant ${issued.id} issued`);
  const entry: LocalGrant = {
    id: issued.id,
    profile,
    brokerUrl,
    auth,
    scopes: issued.scopes,
    pid: process.pid,
    wrapper: currentWrapper(),
    command: describeCommand(options.command),
    createdAt: issued.createdAt,
    expiresAt: issued.expiresAt,
    approvalDeadline: issued.approval?.deadline ?? null,
    state: issued.state === 'pending' ? 'pending' : 'active',
  };
  ctx.config.putGrant(entry);
  await keepCredential(secrets, issued.id, { credential: issued.credential, env: issued.env });
  return { grant: issued, client, entry };
}

/** Takes over a grant this machine holds but no process does (from `jit request` or `jit run --no-wait`). */
async function pickUp(ctx: Context, secrets: SecretStore, grantId: string, command: string[]): Promise<Held> {
  if (!GRANT_ID.test(grantId)) {
    throw new UsageError(`"${grantId}" is not a grant id`, { hint: 'grant ids look like g_0123456789abcdef0123; see `jit grants`' });
  }
  const local = ctx.config.grant(grantId);
  const stored = local ? await heldCredential(secrets, grantId) : undefined;
  if (!local || !stored) {
    throw new NotFoundError(`this machine holds no credential for grant ${grantId}`, {
      hint: "a grant's credential stays on the machine that requested it; see `jit grants`, or request one with `jit request`",
    });
  }
  if (local.wrapper && !wrapperGone(local)) {
    throw new ConflictError(`grant ${grantId} is already in use by jit run (pid ${local.pid})`, {
      code: 'grant_in_use',
      hint: 'one job per grant: request another with `jit request` or `jit run --scope`',
    });
  }
  const client = await ctx.clientForGrant(local);
  const view = await client.getGrant(grantId);
  const entry: LocalGrant = { ...local, pid: process.pid, wrapper: currentWrapper(), command: describeCommand(command) };
  ctx.config.putGrant(entry);
  return { grant: { ...view, ...stored }, client, entry };
}

/**
 * How a waiting `jit run` asks about its pending grant: a heartbeat, which also tells the broker
 * the requester is still there (a request whose waiter died is cancelled, not approved for
 * nobody). A broker that cannot be reached for a moment does not end the wait.
 */
function pollHeld(client: BrokerClient, grant: GrantView): () => Promise<GrantView> {
  let last = grant;
  return async () => {
    try {
      last = await client.heartbeat(grant.id);
    } catch (error) {
      if (error instanceof ConflictError) last = await client.getGrant(grant.id);
      else if (!(error instanceof BrokerUnreachableError)) throw error;
    }
    return last;
  };
}

/** The child's environment: the parent's, minus every JIT_* of jit's own, plus the grant's. */
export function childEnvironment(parentEnv: NodeJS.ProcessEnv, grant: GrantView & HeldCredential): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  // A grant with S3 keys replaces every AWS identity and endpoint the parent had: a profile or an
  // endpoint override left in place would send the job's S3 calls somewhere else, as someone else.
  const replacesAws = 'AWS_ACCESS_KEY_ID' in grant.env;
  // Likewise libpq's variables for a table grant: a parent's PGSERVICE or PGHOSTADDR would win.
  const replacesPg = 'PGUSER' in grant.env;
  for (const [name, value] of Object.entries(parentEnv)) {
    if (name.startsWith('JIT_') || (replacesAws && AWS_IDENTITY.test(name)) || (replacesPg && PG_IDENTITY.test(name))) continue;
    env[name] = value;
  }
  return { ...env, ...grant.env, JIT_GRANT_ID: grant.id, JIT_EXPIRES_AT: grant.expiresAt ?? '' };
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
  const outcome = await ctx.out.during(`revoking grant ${grantId}`, () =>
    releaseOrDefer(grantId, { client: deps.client, config: ctx.config, secrets: deps.secrets }),
  );
  if ('error' in outcome) {
    ctx.out.warn(
      `could not revoke grant ${grantId} (${outcome.error.message}); it lapses on the broker without heartbeats, and the next jit command retries the revocation`,
    );
    return;
  }
  const { receipt } = outcome;
  ctx.out.info(receipt.alreadyEnded ? `grant ${grantId} had already ended (${receipt.state})` : `grant ${grantId} ${receipt.state}`);
}

/**
 * Heartbeats while the job runs, and renews the grant in place when it nears its expiry (within
 * a fifth of its TTL), so a long job keeps the same credential up to the policy's max TTL. When
 * the broker says that max is reached, it says once when access will end and stops asking.
 */
function startHeartbeat(ctx: Context, client: BrokerClient, grant: GrantView): { stop(): void } {
  let inFlight = false;
  let ended = false;
  let renewable = true;
  const intervalMs = grant.heartbeatIntervalSeconds * 1000;
  const renewWithinMs = Math.max(3 * intervalMs, (grant.ttlSeconds * 1000) / 5);
  const beat = async () => {
    const view = await client.heartbeat(grant.id);
    const expiresAt = Date.parse(view.expiresAt ?? '');
    if (!renewable || !(expiresAt - Date.now() < renewWithinMs)) return;
    try {
      const renewed = await client.renewGrant(grant.id);
      ctx.out.info(`grant ${grant.id} renewed: now expires ${renewed.expiresAt}`);
      const local = ctx.config.grant(grant.id);
      if (local) ctx.config.putGrant({ ...local, expiresAt: renewed.expiresAt });
    } catch (error) {
      if (!(error instanceof JitError) || !['renewal_capped', 'renewal_not_later', 'policy_denied'].includes(error.code)) throw error;
      renewable = false;
      ctx.out.notice(`grant ${grant.id} cannot be renewed (${error.message}); the job loses access at ${view.expiresAt}`);
    }
  };
  const timer = setInterval(async () => {
    if (inFlight || ended) return;
    inFlight = true;
    try {
      await beat();
    } catch (error) {
      if (ended) return;
      if (error instanceof ConflictError) {
        ended = true;
        ctx.out.warn(`${error.message}: the job's access has ended`);
        // A grant over its API budget is suspended: `jit grants` says so while the job runs on.
        const state = await client.getGrant(grant.id).then(
          (view) => view.state,
          () => undefined,
        );
        const local = ctx.config.grant(grant.id);
        if (state === 'suspended' && local) ctx.config.putGrant({ ...local, state: 'suspended' });
      } else {
        ctx.out.info(`heartbeat for ${grant.id} failed: ${(error as Error).message}`);
      }
    } finally {
      inFlight = false;
    }
  }, intervalMs);
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
  readonly #abort = new AbortController();
  /** Fires on the first signal: what a wait before the child starts (approval) listens to. */
  readonly abortSignal = this.#abort.signal;
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
    if (!this.#abort.signal.aborted) this.#abort.abort(new Error(`interrupted by ${signal}`));
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
