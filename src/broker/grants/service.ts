import { createReadStream, type ReadStream } from 'node:fs';
import { AuthError, ConflictError, DeniedError, JitError, NotFoundError } from '../../core/errors.ts';
import type { GrantView, IssuedGrant, RevocationReceipt } from '../../core/grant.ts';
import { hashSecret, newId, newSecret } from '../../core/ids.ts';
import { formatScope, parseScope, type Scope } from '../../core/scope.ts';
import type { BrokerConfig } from '../config.ts';
import { type AllowedDecision, describeApproval, evaluate } from '../policy/evaluate.ts';
import { filesEnv } from '../providers/files.ts';
import { checkScope } from '../resources.ts';
import { type BrokerStore, EXPIRE_BATCH, type GrantRecord } from '../store/store.ts';

export type Clock = { now(): number };

export type GrantRequest = { scopes: string[]; ttlSeconds?: number; reason?: string };

const iso = (ms: number) => new Date(ms).toISOString();

/**
 * The grant lifecycle on the broker: request (policy decides), heartbeat, revoke, expire. The
 * store is the only source of truth, so any replica can serve any call.
 */
export class GrantService {
  readonly #config: BrokerConfig;
  readonly #store: BrokerStore;
  readonly #clock: Clock;
  readonly #publicUrl: () => string;
  readonly #streams = new Map<string, Map<ReadStream, number>>();
  #sweeping: Promise<number> | undefined;

  constructor(options: { config: BrokerConfig; store: BrokerStore; clock: Clock; publicUrl: () => string }) {
    this.#config = options.config;
    this.#store = options.store;
    this.#clock = options.clock;
    this.#publicUrl = options.publicUrl;
  }

  async request(subject: string, request: GrantRequest): Promise<IssuedGrant> {
    const { scopes, decision } = await this.#decide(subject, request);
    const now = this.#clock.now();
    const credential = newSecret('jitc');
    const record: GrantRecord = {
      id: newId('g'),
      subject,
      scopes: scopes.map(formatScope),
      reason: request.reason ?? null,
      state: 'active',
      credentialHash: hashSecret(credential),
      createdAt: now,
      expiresAt: now + decision.ttlSeconds * 1000,
      heartbeatDeadline: now + this.#config.heartbeatTimeoutSeconds * 1000,
      endedAt: null,
      endReason: null,
      decision: JSON.stringify(decision),
    };
    await this.#store.insertGrant(record, {
      at: now,
      type: 'grant.issued',
      subject,
      grantId: record.id,
      detail: { scopes: record.scopes, ttlSeconds: decision.ttlSeconds, reason: record.reason, decision },
    });
    return { ...this.view(record), credential, env: filesEnv(this.#publicUrl(), credential) };
  }

  async get(subject: string, id: string): Promise<GrantView> {
    return this.view(await this.#owned(subject, id));
  }

  async list(subject: string): Promise<GrantView[]> {
    return (await this.#store.listGrants({ subject })).map((grant) => this.view(grant));
  }

  /** Any principal's grant: for auditors and admins (docs/principals.md); `get` is the caller's own. */
  async getAny(id: string): Promise<GrantView> {
    return this.view(await this.#any(id));
  }

  /** Every principal's grants, newest first: for auditors and admins. */
  async listAll(): Promise<GrantView[]> {
    return (await this.#store.listGrants({})).map((grant) => this.view(grant));
  }

  async heartbeat(subject: string, id: string): Promise<GrantView> {
    const grant = await this.#owned(subject, id);
    const now = this.#clock.now();
    const extended = await this.#store.extendHeartbeat(id, now + this.#config.heartbeatTimeoutSeconds * 1000, now);
    if (!extended) {
      await this.#expireIfDue(grant, now);
      const current = (await this.#store.getGrant(id)) ?? grant;
      throw new ConflictError(`grant ${id} is ${current.state}${current.endReason ? ` (${current.endReason})` : ''}`, {
        code: 'grant_ended',
        hint: 'request a new grant',
      });
    }
    return this.view(extended);
  }

  /** Revokes `subject`'s own grant, or with `anyOwner` (an admin) anyone's, in `subject`'s name. */
  async revoke(subject: string, id: string, options: { anyOwner?: boolean } = {}): Promise<RevocationReceipt> {
    const find = () => (options.anyOwner ? this.#any(id) : this.#owned(subject, id));
    const grant = await find();
    const now = this.#clock.now();
    await this.#expireIfDue(grant, now);
    const ended = await this.#store.endGrant(id, 'revoked', `revoked by ${subject}`, now);
    if (!ended) {
      const current = await find();
      return {
        id,
        state: current.state,
        revokedAt: current.endedAt === null ? null : iso(current.endedAt),
        alreadyEnded: true,
        actions: [],
      };
    }
    this.#cutStreams(id);
    const actions = ['credential refused by the files endpoint', 'open transfers cut'];
    await this.#audit('grant.revoked', ended, { by: subject, actions });
    return { id, state: ended.state, revokedAt: iso(now), alreadyEnded: false, actions };
  }

  /**
   * Ends grants past expiry or heartbeat deadline; each one is an audit record. A backlog is
   * worked off in batches of EXPIRE_BATCH with a turn of the event loop between them, so API
   * requests are served while it drains. One sweep at a time per replica: callers that arrive
   * during one wait for it.
   */
  sweep(): Promise<number> {
    this.#sweeping ??= this.#sweepAll().finally(() => {
      this.#sweeping = undefined;
    });
    return this.#sweeping;
  }

  async #sweepAll(): Promise<number> {
    let total = 0;
    for (;;) {
      const now = this.#clock.now();
      const expired = await this.#store.expireDue(now, EXPIRE_BATCH);
      for (const grant of expired) this.#cutStreams(grant.id);
      await this.#store.appendEvents(
        expired.map((grant) => ({
          at: now,
          type: 'grant.expired',
          subject: grant.subject,
          grantId: grant.id,
          detail: { reason: grant.endReason },
        })),
      );
      total += expired.length;
      if (expired.length < EXPIRE_BATCH) return total;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /**
   * Ends one grant that is past its expiry or heartbeat deadline, as the sweeper would, so that
   * revoke and heartbeat answer with the true end state without waiting for a whole sweep (which
   * may be draining a backlog). Conditional like every end: whoever ends it first wins.
   */
  async #expireIfDue(grant: GrantRecord, now: number): Promise<void> {
    if (grant.state !== 'active' || (now < grant.expiresAt && now < grant.heartbeatDeadline)) return;
    const ended = await this.#store.endGrant(grant.id, 'expired', now >= grant.expiresAt ? 'ttl' : 'heartbeat', now);
    if (!ended) return;
    this.#cutStreams(ended.id);
    await this.#audit('grant.expired', ended, { reason: ended.endReason });
  }

  /**
   * The grant behind a job's credential, if it is usable right now; the data plane's one check.
   * A refusal is audited too (without the credential): probing with dead credentials shows up.
   */
  async usableGrant(credential: string | undefined): Promise<{ grant: GrantRecord; scopes: Scope[] }> {
    const grant = credential ? await this.#store.findGrantByCredentialHash(hashSecret(credential)) : undefined;
    if (!grant) {
      await this.#store.appendEvent({
        at: this.#clock.now(),
        type: 'data.refused',
        subject: null,
        grantId: null,
        detail: { reason: 'unknown_credential' },
      });
      throw new AuthError('the grant credential is not valid', { hint: 'run the job under `jit run` to get a credential' });
    }
    const now = this.#clock.now();
    if (grant.state !== 'active' || now >= grant.expiresAt || now >= grant.heartbeatDeadline) {
      await this.#audit('data.refused', grant, { reason: 'grant_ended', state: grant.state });
      throw new AuthError(`grant ${grant.id} is no longer active`, { code: 'grant_ended', hint: 'request a new grant with `jit run`' });
    }
    return { grant, scopes: grant.scopes.map(parseScope) };
  }

  async recordDataAccess(grant: GrantRecord, detail: Record<string, unknown>): Promise<void> {
    await this.#audit('data.read', grant, detail);
  }

  /**
   * A file stream that dies with its grant: revocation and expiry cut transfers already under
   * way, not just new requests. (This replica's streams only; see docs/architecture.md.)
   */
  openForGrant(grantId: string, file: string, size: number): ReadStream {
    const stream = createReadStream(file);
    const open = this.#streams.get(grantId) ?? new Map<ReadStream, number>();
    this.#streams.set(grantId, open.set(stream, size));
    const done = () => {
      open.delete(stream);
      if (open.size === 0) this.#streams.delete(grantId);
    };
    stream.once('end', done).once('close', done);
    return stream;
  }

  /**
   * Cuts the transfers of a grant that still have bytes to read. One whose file is read to the
   * end is done (its 'end' may lag behind the client's next request), and destroying it would
   * only reset the client's keep-alive connection.
   */
  #cutStreams(grantId: string): void {
    for (const [stream, size] of this.#streams.get(grantId) ?? []) {
      if (stream.bytesRead < size) stream.destroy(new Error(`grant ${grantId} ended`));
    }
  }

  /**
   * Parses and decides a request. A refusal (bad scope, policy, TTL, approval needed) is an audit
   * record too, with what was asked and why it was refused: every decision is on the trail.
   */
  async #decide(subject: string, request: GrantRequest): Promise<{ scopes: Scope[]; decision: AllowedDecision }> {
    try {
      const scopes = request.scopes.map((text) => checkScope(this.#config.resources, parseScope(text)));
      const decision = evaluate(this.#config, { subject }, scopes, request.ttlSeconds);
      if (decision.approval.required) {
        // Until the approval flow exists (issue 3, Lifecycle), a request that needs approval is refused, never issued.
        const scopesNeeding = decision.explanation.filter((scope) => scope.approval).map((scope) => scope.scope);
        throw new DeniedError(
          `${scopesNeeding.join(', ')} ${scopesNeeding.length === 1 ? 'needs' : 'need'} approval by ${describeApproval(decision.approval)} (no self-approval), and the approval flow is not available on this broker yet`,
          {
            code: 'approval_required',
            hint: 'request a scope whose rule needs no approval, or ask a data owner for one (docs/policy.md#approval)',
          },
        );
      }
      return { scopes, decision };
    } catch (error) {
      if (error instanceof JitError) {
        await this.#store.appendEvent({
          at: this.#clock.now(),
          type: 'grant.refused',
          subject,
          grantId: null,
          detail: {
            scopes: request.scopes,
            ttlSeconds: request.ttlSeconds ?? null,
            reason: request.reason ?? null,
            code: error.code,
            message: error.message,
          },
        });
      }
      throw error;
    }
  }

  view(grant: GrantRecord): GrantView {
    return {
      id: grant.id,
      subject: grant.subject,
      scopes: grant.scopes,
      reason: grant.reason,
      state: grant.state,
      createdAt: iso(grant.createdAt),
      expiresAt: iso(grant.expiresAt),
      heartbeatDeadline: iso(grant.heartbeatDeadline),
      heartbeatIntervalSeconds: Math.max(1, Math.floor(this.#config.heartbeatTimeoutSeconds / 3)),
      endedAt: grant.endedAt === null ? null : iso(grant.endedAt),
      endReason: grant.endReason,
    };
  }

  async #owned(subject: string, id: string): Promise<GrantRecord> {
    const grant = await this.#store.getGrant(id);
    if (!grant || grant.subject !== subject) throw new NotFoundError(`no grant ${id}`, { hint: 'list your grants with `jit grants`' });
    return grant;
  }

  async #any(id: string): Promise<GrantRecord> {
    const grant = await this.#store.getGrant(id);
    if (!grant) throw new NotFoundError(`no grant ${id}`, { hint: 'list every grant with GET /v1/grants?all=true' });
    return grant;
  }

  async #audit(type: string, grant: GrantRecord, detail: Record<string, unknown>): Promise<void> {
    await this.#store.appendEvent({ at: this.#clock.now(), type, subject: grant.subject, grantId: grant.id, detail });
  }
}
