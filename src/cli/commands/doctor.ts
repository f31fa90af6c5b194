import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import path from 'node:path';
import { BrokerClient } from '../../client/broker-client.ts';
import { describeSource, oidcSource } from '../../client/oidc.ts';
import { releaseOrDefer } from '../../client/release.ts';
import type { LocalGrant } from '../../config/local.ts';
import { JitError } from '../../core/errors.ts';
import { leftoverReason } from '../../runner/reap.ts';
import type { SecretStore } from '../../secrets/store.ts';
import type { CommandDefinition } from '../command.ts';
import type { Context } from '../context.ts';

export type CheckStatus = 'pass' | 'warn' | 'fail';
export type Check = { name: string; status: CheckStatus; detail: string; fix?: string };

/** Any failed check exits 1 (docs/cli.md#jit-doctor); warnings alone exit 0. */
const CHECK_FAILED = 1;
const HEALTH_TIMEOUT_MS = 5_000;
/** Grant expiry is decided on the broker, so skew breaks nothing; it only misleads people reading times. */
const SKEW_WARN_MS = 30_000;
const SKEW_FAIL_MS = 5 * 60_000;
const REAP_TIMEOUT_MS = 5_000;

export const doctor: CommandDefinition = {
  path: 'doctor',
  summary: 'check the broker, clock, keychain, local config and leftover grants, with a fix for each problem',
  // Leftovers are shown as they are, and reaped when the user says so (grantsCheck).
  reapFirst: false,
  define: (command) => command.option('--reap', 'revoke leftover grants now, without asking (on a terminal doctor offers to)'),
  async handler({ options }, ctx) {
    const checks = await ctx.out.during('checking the broker, the keychain and the local config', async () => [
      ...(await brokerChecks(ctx)),
      await keychainCheck(ctx),
      configCheck(ctx),
    ]);
    checks.push(await grantsCheck(ctx, Boolean(options.reap)));
    const ok = checks.every((check) => check.status !== 'fail');
    return { data: { checks, ok }, human: render(checks, ctx), exitCode: ok ? 0 : CHECK_FAILED };
  },
};

/** broker (reachable, version), clock (skew from the health response's Date header) and auth (whoami). */
async function brokerChecks(ctx: Context): Promise<Check[]> {
  const profile = ctx.options.profile;
  // --broker, then JIT_BROKER_URL, then the profile's: the same choice every command makes.
  const fromEnv = Boolean(ctx.options.broker || ctx.env.JIT_BROKER_URL);
  const brokerUrl = ctx.options.broker || ctx.env.JIT_BROKER_URL || ctx.config.profile(profile)?.brokerUrl;
  const loginFix = `run \`jit login --broker ${brokerUrl ?? 'URL'}\``;
  if (!brokerUrl) {
    const detail = `no broker configured for profile "${profile}" and JIT_BROKER_URL is not set`;
    return [
      { name: 'broker', status: 'fail', detail, fix: `${loginFix}, or set JIT_BROKER_URL and JIT_TOKEN` },
      notChecked('clock', 'no broker to compare with'),
      notChecked('auth', 'no broker to log in to'),
    ];
  }
  const source = fromEnv ? 'JIT_BROKER_URL' : `profile ${profile}`;
  const started = Date.now();
  let health: Awaited<ReturnType<BrokerClient['health']>>;
  try {
    health = await new BrokerClient({ brokerUrl, timeoutMs: HEALTH_TIMEOUT_MS, retries: 0 }).health();
  } catch (error) {
    return [
      { name: 'broker', status: 'fail', detail: `${brokerUrl} (${source}): ${messageOf(error)}`, fix: fixOf(error, loginFix) },
      notChecked('clock', 'the broker is unreachable'),
      notChecked('auth', 'the broker is unreachable'),
    ];
  }
  const localMs = (started + Date.now()) / 2;
  return [
    { name: 'broker', status: 'pass', detail: `${brokerUrl} (${source}) is up, version ${health.version}` },
    clockCheck(health.date, localMs),
    await authCheck(ctx, fromEnv, loginFix),
  ];
}

function clockCheck(brokerDate: string | undefined, localMs: number): Check {
  const brokerMs = brokerDate ? Date.parse(brokerDate) : Number.NaN;
  if (Number.isNaN(brokerMs)) return notChecked('clock', 'the broker sent no Date header');
  // The Date header has whole seconds: the broker's time lies within the second after it.
  const skewMs = localMs - (brokerMs + 500);
  const seconds = Math.round(Math.abs(skewMs) / 1000);
  const detail = `this machine is ${seconds} s ${skewMs >= 0 ? 'ahead of' : 'behind'} the broker`;
  const fix = 'sync the system clock (timedatectl set-ntp true, or your OS time settings); grant expiry is kept by the broker';
  if (Math.abs(skewMs) > SKEW_FAIL_MS) return { name: 'clock', status: 'fail', detail, fix };
  if (Math.abs(skewMs) > SKEW_WARN_MS) return { name: 'clock', status: 'warn', detail, fix };
  return { name: 'clock', status: 'pass', detail: seconds <= 1 ? 'in step with the broker' : detail };
}

async function authCheck(ctx: Context, fromEnv: boolean, loginFix: string): Promise<Check> {
  // The same choice every command makes: JIT_TOKEN, else the CI job's OIDC identity, else the keychain token.
  const oidc = ctx.env.JIT_TOKEN ? undefined : oidcSource(ctx.env);
  const fix = oidc
    ? "give the job an identity token the broker accepts (GitHub: permissions id-token: write; GitLab: id_tokens) and check the broker's oidc.issuers (docs/ci.md#oidc-no-stored-secret)"
    : fromEnv
      ? 'set JIT_TOKEN to a valid token for JIT_BROKER_URL, or unset both and `jit login --broker URL`'
      : loginFix;
  try {
    const session = await ctx.session();
    const { subject } = await session.client.whoami();
    const how =
      session.auth === 'oidc' && oidc
        ? `CI OIDC identity, ${describeSource(oidc)}`
        : session.auth === 'env'
          ? 'JIT_TOKEN'
          : 'keychain token';
    return { name: 'auth', status: 'pass', detail: `authenticated as ${subject} (${how})` };
  } catch (error) {
    return { name: 'auth', status: 'fail', detail: messageOf(error), fix };
  }
}

/** A write/read/delete round trip on a doctor entry of its own: never a real credential. */
async function keychainCheck(ctx: Context): Promise<Check> {
  let store: SecretStore;
  try {
    store = await ctx.secrets();
  } catch (error) {
    return { name: 'keychain', status: 'fail', detail: messageOf(error), fix: fixOf(error, 'see docs/keychain.md') };
  }
  if (store.backend === 'memory') {
    return {
      name: 'keychain',
      status: 'warn',
      detail: `memory only: credentials do not outlive one command (${store.fallbackReason ?? 'no reason given'})`,
      fix: 'set up an OS keychain (on Linux: gnome-keyring under a D-Bus session); see docs/keychain.md',
    };
  }
  const account = `doctor:${process.pid}:${randomBytes(4).toString('hex')}`;
  const value = randomBytes(16).toString('hex');
  try {
    await store.set(account, value);
    const read = await store.get(account);
    if (read !== value) throw new Error('an entry read back differs from what was written');
    if (!(await store.delete(account))) throw new Error('an entry just written could not be deleted');
    return { name: 'keychain', status: 'pass', detail: `OS keychain via ${store.backend}: write, read and delete work` };
  } catch (error) {
    await store.delete(account).catch(() => false);
    return {
      name: 'keychain',
      status: 'fail',
      detail: `OS keychain via ${store.backend}: ${messageOf(error)}`,
      fix: fixOf(error, 'unlock the keychain and retry; see docs/keychain.md'),
    };
  }
}

/** The config file holds no secret, but grant ids, brokers and commands: it is the user's alone. */
function configCheck(ctx: Context): Check {
  const file = ctx.config.path;
  const directory = path.dirname(file);
  if (process.platform === 'win32') return { name: 'config', status: 'pass', detail: `${file} (permissions are not checked on Windows)` };
  const problems: string[] = [];
  const fixes: string[] = [];
  const fileMode = statSync(file, { throwIfNoEntry: false })?.mode;
  if (fileMode !== undefined && (fileMode & 0o777) !== 0o600) {
    problems.push(`${file} has mode ${octal(fileMode)}, not 0600`);
    fixes.push(`chmod 600 ${file}`);
  }
  const directoryMode = statSync(directory, { throwIfNoEntry: false })?.mode;
  if (directoryMode !== undefined && directoryMode & 0o002) {
    problems.push(`its directory ${directory} is world-writable (${octal(directoryMode)})`);
    fixes.push(`chmod 700 ${directory}`);
  }
  if (problems.length > 0) return { name: 'config', status: 'fail', detail: problems.join('; '), fix: fixes.join(' && ') };
  return { name: 'config', status: 'pass', detail: fileMode === undefined ? `${file} (not written yet)` : `${file} (mode 0600)` };
}

/**
 * Leftover grants: what the reaper at the start of this command could not finish (usually: their
 * broker is down). With --reap, or when the person at the terminal agrees, doctor tries once more
 * to revoke them, with a longer timeout than the start-up reaper's.
 */
async function grantsCheck(ctx: Context, reap: boolean): Promise<Check> {
  let leftovers = leftoverGrants(ctx);
  if (leftovers.length === 0) return { name: 'grants', status: 'pass', detail: 'no leftover grants on this machine' };
  const reaped: string[] = [];
  if (reap || (await offerToReap(ctx, leftovers.length))) {
    const secrets = await ctx.secrets();
    for (const { grant } of leftovers) {
      const client = await ctx.clientForGrant(grant, { timeoutMs: REAP_TIMEOUT_MS, retries: 1 });
      const outcome = await ctx.out.during(`revoking ${grant.id}`, () => releaseOrDefer(grant.id, { client, config: ctx.config, secrets }));
      if ('receipt' in outcome) reaped.push(`${grant.id} (${outcome.receipt.state})`);
    }
    leftovers = leftoverGrants(ctx);
  }
  const done = reaped.length > 0 ? `reaped ${reaped.join(', ')}` : '';
  if (leftovers.length === 0) return { name: 'grants', status: 'pass', detail: done || 'no leftover grants on this machine' };
  const left = `${leftovers.length} left over: ${leftovers.map(({ grant, why }) => `${grant.id} (${why})`).join(', ')}`;
  return {
    name: 'grants',
    status: 'warn',
    detail: done ? `${done}; ${left}` : left,
    fix: 'run `jit doctor --reap` (or any other jit command) once their broker is reachable, or `jit revoke ID`; without heartbeats they lapse on the broker anyway',
  };
}

function leftoverGrants(ctx: Context): { grant: LocalGrant; why: string }[] {
  return ctx.config.grants().flatMap((grant) => {
    const why = leftoverReason(grant);
    return why === undefined ? [] : [{ grant, why }];
  });
}

/** On a terminal (and CI unset), asks whether to revoke the leftovers now; elsewhere doctor only reports them. */
async function offerToReap(ctx: Context, count: number): Promise<boolean> {
  if (!ctx.interactive) return false;
  const { confirm } = await import('@inquirer/prompts');
  const message = `Revoke the ${count} leftover grant${count === 1 ? '' : 's'} now?`;
  return confirm({ message, default: true }, { output: process.stderr });
}

function notChecked(name: string, why: string): Check {
  return { name, status: 'warn', detail: `not checked: ${why}` };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function fixOf(error: unknown, fallback: string): string {
  return error instanceof JitError && error.hint ? error.hint : fallback;
}

function octal(mode: number): string {
  return `0${(mode & 0o777).toString(8)}`;
}

/** One line per check, its fix indented below it, then a summary; ASCII marks when stdout is not a terminal. */
function render(checks: Check[], ctx: Context): string {
  const { color } = ctx.out;
  const marks = process.stdout.isTTY
    ? { pass: color.green('✔'), warn: color.yellow('!'), fail: color.red('✖') }
    : { pass: 'ok  ', warn: 'warn', fail: 'FAIL' };
  const width = Math.max(...checks.map((check) => check.name.length));
  const indent = ' '.repeat((process.stdout.isTTY ? 1 : 4) + 1 + width + 2);
  const lines = checks.flatMap((check) => [
    `${marks[check.status]} ${check.name.padEnd(width)}  ${check.detail}`,
    ...(check.fix ? [`${indent}fix: ${check.fix}`] : []),
  ]);
  const count = (status: CheckStatus) => checks.filter((check) => check.status === status).length;
  const [warnings, failures] = [count('warn'), count('fail')];
  const summary =
    failures > 0
      ? `${failures} check${failures === 1 ? '' : 's'} failed, ${warnings} warning${warnings === 1 ? '' : 's'}.`
      : warnings > 0
        ? `No failures, ${warnings} warning${warnings === 1 ? '' : 's'}.`
        : 'All checks passed.';
  return [...lines, '', summary].join('\n');
}
