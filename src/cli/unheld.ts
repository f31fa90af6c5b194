import { releaseOrDefer } from '../client/release.ts';
import type { LocalGrant } from '../config/local.ts';
import { parseDuration } from '../core/duration.ts';
import { UsageError } from '../core/errors.ts';
import type { IssuedGrant } from '../core/grant.ts';
import { formatScope, parseScope } from '../core/scope.ts';
import { keepCredential } from '../runner/held.ts';
import { authFor, type Context, type Session } from './context.ts';

/** The TTL a command asks for: `--ttl`, else the profile's default (`jit config set --default-ttl`), else the policy's. */
export function requestedTtlSeconds(ctx: Context, option: unknown): number | undefined {
  const ttl = option === undefined ? ctx.config.profile(ctx.options.profile)?.defaultTtl : String(option);
  return ttl === undefined ? undefined : parseDuration(ttl, '--ttl');
}

/** `--wait-timeout` in milliseconds, when given. */
export function waitTimeoutMs(option: unknown): number | undefined {
  return option === undefined ? undefined : parseDuration(String(option), '--wait-timeout') * 1000;
}

/**
 * A grant left for a later command (`jit request`, `jit run --no-wait`) needs its credential kept
 * until then, in the keychain. A CI job on its OIDC identity keeps nothing: the credential would
 * be gone when this process exits, and `jit run --grant ID` could not use the grant. Refused
 * before anything is requested, so no grant is left on the broker.
 */
export function refuseUnheldWithOidc(ctx: Context, command: string): void {
  if (authFor(ctx.env) !== 'oidc') return;
  throw new UsageError(
    `${command} cannot leave a grant for a later step with a CI OIDC identity: its credential would exist in this process only`,
    {
      hint: 'use `jit run --scope SCOPE -- COMMAND`, which waits for approval holding the grant, or `jit env` to give its variables to later steps (docs/ci.md#oidc-no-stored-secret)',
    },
  );
}

export type UnheldGrant = {
  issued: IssuedGrant;
  entry: LocalGrant;
  client: Session['client'];
  /** Revokes it (or cancels it, if pending) and forgets it here; defers when the broker is down. */
  release(): ReturnType<typeof releaseOrDefer>;
};

/**
 * Requests a grant no process holds (`jit request`, `jit env`): its heartbeat clock starts only
 * when `jit run --grant` picks it up, it is indexed with no wrapper (so `jit revoke ID` / `--all`
 * finds it), and its credential and job environment go to the keychain. If the keychain refuses
 * them, the grant is released again: nothing is left that nobody can use or see.
 */
export async function requestUnheld(
  ctx: Context,
  request: { scopes: readonly string[]; ttlSeconds: number | undefined; reason: unknown; command: string },
): Promise<UnheldGrant> {
  const { client, profile, brokerUrl, auth } = await ctx.session();
  const secrets = await ctx.secrets();
  const issued = await client.requestGrant({
    scopes: request.scopes.map((text) => formatScope(parseScope(text))),
    ttlSeconds: request.ttlSeconds,
    reason: request.reason === undefined ? undefined : String(request.reason),
    heartbeat: false,
  });
  const entry: LocalGrant = {
    id: issued.id,
    profile,
    brokerUrl,
    auth,
    scopes: issued.scopes,
    pid: null,
    wrapper: null,
    command: request.command,
    createdAt: issued.createdAt,
    expiresAt: issued.expiresAt,
    approvalDeadline: issued.approval?.deadline ?? null,
    state: issued.state === 'pending' ? 'pending' : 'active',
  };
  ctx.config.putGrant(entry);
  const release = () => releaseOrDefer(issued.id, { client, config: ctx.config, secrets });
  try {
    await keepCredential(secrets, issued.id, { credential: issued.credential, env: issued.env });
  } catch (error) {
    await release();
    throw error;
  }
  return { issued, entry, client, release };
}
