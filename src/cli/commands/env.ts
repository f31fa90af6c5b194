import { randomUUID } from 'node:crypto';
import { appendFile } from 'node:fs/promises';
import { describeApproval } from '../../core/approval.ts';
import { type JitError, PendingError, UsageError } from '../../core/errors.ts';
import type { GrantView } from '../../core/grant.ts';
import { waitForApproval } from '../../runner/wait.ts';
import type { CommandDefinition } from '../command.ts';
import { authFor } from '../context.ts';
import { requestedTtlSeconds, requestUnheld, waitTimeoutMs } from '../unheld.ts';

const collect = (value: string, previous: string[] = []) => [...previous, value];

export const ENV_FORMATS = ['shell', 'dotenv', 'json', 'github'] as const;
export type EnvFormat = (typeof ENV_FORMATS)[number];

/** The variables `jit env` prints: the grant's own, then JIT_GRANT_ID and JIT_EXPIRES_AT (as `jit run` sets them). */
export type GrantVariables = Record<string, string>;

export const env: CommandDefinition = {
  path: 'env',
  summary: 'request a grant for a CI step `jit run` cannot wrap and PRINT its variables, secrets included',
  define: (command) =>
    command
      .requiredOption('-s, --scope <scope>', 'what the step will need, e.g. datasets/train (repeatable)', collect)
      .option(
        '--ttl <duration>',
        'how long the grant may live once active, e.g. 30m (default: the policy default); no process keeps it alive',
      )
      .option('--reason <text>', 'why, shown to approvers and recorded in the audit trail')
      .option('--format <format>', `shell, dotenv, json or github (default: shell; --json means --format json)`)
      .option(
        '--wait',
        "if it needs approval, wait for the decision (else exit 9 with the grant still pending; always on with a CI job's OIDC identity)",
      )
      .option('--wait-timeout <duration>', 'with --wait: give up waiting after this long (exit 9, the request stays pending)')
      .addHelpText(
        'after',
        [
          '',
          'This command prints live credentials on stdout (or writes them to $GITHUB_ENV): that is its job.',
          'Send its output only where the step needs it, e.g. eval "$(jit env --scope datasets/train)".',
          'The grant is not kept alive by any process: it ends at its TTL, or at `jit revoke ID` / `jit revoke --all --yes`',
          "in the job's cleanup step. Errors and progress never contain the secrets. See docs/ci.md.",
        ].join('\n'),
      ),
  async handler({ options }, ctx) {
    const format = chosenFormat(options.format, ctx.out.json);
    // Checked before anything is requested: a step that cannot receive the variables must not leave a grant behind.
    const destination =
      format === 'github' ? ({ to: 'github', file: githubEnvFile(ctx.env) } as const) : ({ to: 'stdout', format } as const);
    const ttlSeconds = requestedTtlSeconds(ctx, options.ttl);
    const timeoutMs = waitTimeoutMs(options.waitTimeout);
    // Kept exactly as `jit request` keeps a grant (no process holds it; it ends by its TTL or by
    // `jit revoke` in the cleanup step), so `jit revoke ID` / `--all` finds it.
    const { issued, entry, client, release } = await requestUnheld(ctx, {
      scopes: options.scope as string[],
      ttlSeconds,
      reason: options.reason,
      command: '(jit env)',
    });
    const { credential, env: grantEnv, ...view } = issued;

    let grant: GrantView = view;
    // A CI job on its OIDC identity keeps no credential after it exits (docs/ci.md), so a request
    // left pending could never be used: it waits for the decision as if --wait were given.
    const wait = Boolean(options.wait) || authFor(ctx.env) === 'oidc';
    if (grant.state === 'pending') {
      if (!wait) {
        // Left pending and indexed: the job's cleanup step (`jit revoke --all --yes`) cancels it.
        throw new PendingError(`grant ${grant.id} needs approval by ${describeApproval(grant)}; no variables printed`, {
          code: 'approval_pending',
          hint: `pass --wait to wait for the decision; the request stays pending until \`jit revoke ${grant.id}\``,
          grantId: grant.id,
        });
      }
      try {
        grant = await waitForApproval(ctx, grant, {
          poll: () => client.getGrant(issued.id),
          intervalMs: 2_000,
          timeoutMs,
          timeoutHint: `it stays pending: ask ${describeApproval(grant)} to review it, or cancel it with \`jit revoke ${grant.id}\``,
        });
      } catch (error) {
        // Denied or timed out on the broker: nothing left to hold. Our own wait running out leaves it pending.
        if (!(error instanceof PendingError && error.code === 'approval_wait_timeout')) await release();
        throw error;
      }
      ctx.config.putGrant({ ...entry, state: 'active', expiresAt: grant.expiresAt });
    }

    const variables: GrantVariables = { ...grantEnv, JIT_GRANT_ID: grant.id, JIT_EXPIRES_AT: grant.expiresAt ?? '' };
    if (destination.to === 'stdout') return { data: variables, human: render(destination.format, variables) };
    try {
      await appendFile(destination.file, githubEnvLines(variables));
    } catch (error) {
      await release();
      throw githubEnvError(destination.file, error);
    }
    const masks = secretValues(variables, credential).flatMap(maskCommands);
    const summary = `${grant.id} is active until ${grant.expiresAt}; wrote ${Object.keys(variables).length} variables to $GITHUB_ENV`;
    return { data: variables, human: [...masks, summary].join('\n') };
  },
};

/** `--json` is `--format json`; asking for JSON and another format at once is a usage error, not a guess. */
function chosenFormat(option: unknown, json: boolean): EnvFormat {
  const format = option === undefined ? (json ? 'json' : 'shell') : String(option);
  if (!(ENV_FORMATS as readonly string[]).includes(format))
    throw new UsageError(`--format must be one of ${ENV_FORMATS.join(', ')}, not "${format}"`, { hint: 'run `jit env --help`' });
  if (json && format !== 'json')
    throw new UsageError(`--json prints the variables as JSON, which contradicts --format ${format}`, {
      hint: 'drop --json, or use --format json',
    });
  return format as EnvFormat;
}

function githubEnvFile(environment: NodeJS.ProcessEnv): string {
  const file = environment.GITHUB_ENV;
  if (!file)
    throw new UsageError('--format github needs $GITHUB_ENV, which GitHub Actions sets in every step', {
      hint: 'run it inside a GitHub Actions step, or use --format shell',
    });
  return file;
}

function githubEnvError(file: string, error: unknown): JitError {
  const code = (error as NodeJS.ErrnoException).code ?? 'unknown error';
  return new UsageError(`cannot append to $GITHUB_ENV (${file}): ${code}; the grant was revoked`, {
    hint: 'check that $GITHUB_ENV names a writable file',
  });
}

/** The variables as text for `format` (github is written to $GITHUB_ENV instead). */
export function render(format: Exclude<EnvFormat, 'github'>, variables: GrantVariables): string {
  const entries = Object.entries(variables).map(([name, value]) => [checkedName(name), value] as const);
  if (format === 'json') return JSON.stringify(variables, null, 2);
  if (format === 'dotenv') return entries.map(([name, value]) => `${name}=${dotenvQuote(value)}`).join('\n');
  return entries.map(([name, value]) => `export ${name}=${shellQuote(value)}`).join('\n');
}

/** POSIX single quotes: nothing inside is special, and a quote is closed, escaped and reopened. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** Double quotes as dotenv parsers (dotenv, docker compose, python-dotenv) read them back. */
export function dotenvQuote(value: string): string {
  return `"${value.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n').replaceAll('\r', '\\r')}"`;
}

/**
 * $GITHUB_ENV lines: NAME=value, or the heredoc form with a random delimiter for a value with a
 * line break (https://docs.github.com/actions/reference/workflow-commands-for-github-actions#multiline-strings).
 */
export function githubEnvLines(variables: GrantVariables): string {
  return Object.entries(variables)
    .map(([name, value]) => {
      checkedName(name);
      if (!/[\r\n]/.test(value)) return `${name}=${value}\n`;
      let delimiter = `ghadelimiter_${randomUUID()}`;
      while (value.includes(delimiter)) delimiter = `ghadelimiter_${randomUUID()}`;
      return `${name}<<${delimiter}\n${value}\n${delimiter}\n`;
    })
    .join('');
}

const SECRET_NAME = /SECRET|TOKEN|PASSWORD|PASSWD|KEY|CREDENTIAL/i;

/**
 * The values GitHub must mask: the credential, every variable whose name says it is secret
 * (AWS_SECRET_ACCESS_KEY, PGPASSWORD, *_API_KEY...), and any other value that embeds one of
 * those (a DATABASE_URL with its password).
 */
export function secretValues(variables: GrantVariables, credential: string): string[] {
  const core = new Set([credential, ...Object.entries(variables).flatMap(([name, value]) => (SECRET_NAME.test(name) ? [value] : []))]);
  core.delete('');
  const embedding = Object.values(variables).filter((value) => [...core].some((secret) => value !== secret && value.includes(secret)));
  return [...new Set([...core, ...embedding])];
}

/** `::add-mask::` commands for one value: GitHub masks line by line, so each line of a multi-line value too. */
function maskCommands(value: string): string[] {
  const parts = value.split(/\r?\n/).filter((line) => line.trim() !== '');
  const all = parts.length > 1 ? [...parts] : [value];
  return all.map((part) => `::add-mask::${escapeCommandData(part)}`);
}

/** Workflow-command data escaping, as @actions/core does it. */
function escapeCommandData(value: string): string {
  return value.replaceAll('%', '%25').replaceAll('\r', '%0D').replaceAll('\n', '%0A');
}

/** A name a shell can `export`: the broker sends only these, and a stray one must not become shell code. */
function checkedName(name: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`the broker sent an invalid variable name: ${JSON.stringify(name)}`);
  return name;
}
