import { createReadStream, type ReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { describeRequirements } from '../../core/approval.ts';
import type { Caller } from '../../core/caller.ts';
import { formatDuration } from '../../core/duration.ts';
import { AuthError, ConflictError, ForbiddenError, JitError, NotFoundError } from '../../core/errors.ts';
import type { ApprovalView, GrantView, IssuedGrant, RevocationReceipt } from '../../core/grant.ts';
import { hashSecret, newSecret, newTimeOrderedId } from '../../core/ids.ts';
import { formatScope, parseScope, type Scope } from '../../core/scope.ts';
import type { BrokerConfig, Budget, HttpResource } from '../config.ts';
import { type AllowedDecision, type Decision, evaluate, type Principal } from '../policy/evaluate.ts';
import { filesEnv } from '../providers/files.ts';
import { httpEnv } from '../providers/http/proxy.ts';
import type { TableProvider } from '../providers/postgres/provider.ts';
import { checkScope } from '../resources.ts';
import {
  type ApprovalRecord,
  type AuditEvent,
  aboutGrant,
  type BrokerStore,
  EXPIRE_BATCH,
  type GrantRecord,
  NO_HEARTBEAT,
} from '../store/store.ts';
import { allMet, mayReview, type Requirement, requirementsOf, statusOf } from './approvals.ts';

export type Clock = { now(): number };

/** Who requests or renews: a subject (an API token's), or a caller that may be a CI session with claims. */
export type Requester = string | Pick<Caller, 'subject' | 'claims' | 'sessionExpiresAt'>;

/** What a data plane learns of a credential (GrantService.checkCredential). */
export type CredentialCheck =
  | { usable: true; grant: GrantRecord; scopes: Scope[] }
  | { usable: false; grant: GrantRecord | undefined; reason: 'unknown_credential' | 'grant_pending' | 'grant_ended' };

/**
 * What a requester asks for. `heartbeat: false` (jit request, jit run --no-wait) leaves the
 * heartbeat clock stopped until the first heartbeat: nobody holds the grant yet.
 */
export type GrantRequest = { scopes: string[]; ttlSeconds?: number; reason?: string; heartbeat?: boolean };

const iso = (ms: number) => new Date(ms).toISOString();

/** Capped exponential back-off for cleanup retries: 2 s, 4 s, 8 s, ... up to 5 minutes. */
const backoffMs = (attempt: number) => Math.min(300_000, 1000 * 2 ** attempt);
const RECONCILE_EVERY_MS = 60_000;

/** The policy decision a grant was made under, as stored with it. */
const parseDecision = (grant: GrantRecord): Decision => JSON.parse(grant.decision) as Decision;

/**
 * The grant lifecycle on the broker: request (policy decides), heartbeat, revoke, expire. The
 * store is the only source of truth, so any replica can serve any call.
 */
export class GrantService {
  readonly #config: BrokerConfig;
  readonly #store: BrokerStore;
  readonly #clock: Clock;
  readonly #publicUrl: () => string;
  /** The postgres provider, when the broker has postgres resources. */
  readonly #tables: TableProvider | undefined;
  #lastReconcile = 0;
  readonly #budgets = new Map<string, Budget | undefined>();
  readonly #streams = new Map<string, Map<Readable, number>>();
  #sweeping: Promise<number> | undefined;

  constructor(options: { config: BrokerConfig; store: BrokerStore; clock: Clock; publicUrl: () => string; tables?: TableProvider }) {
    this.#config = options.config;
    this.#store = options.store;
    this.#clock = options.clock;
    this.#publicUrl = options.publicUrl;
    this.#tables = options.tables;
  }

  /**
   * Creates a grant: active at once when the policy allows it outright, pending when a rule needs
   * approval. Either way the requester gets the credential now, once; a pending grant's
   * credential is refused by the data plane until approval makes the grant active.
   */
  async request(requester: Requester, request: GrantRequest, context: { source?: string } = {}): Promise<IssuedGrant> {
    const principal = this.#principal(requester);
    const { subject } = principal;
    const { scopes, decision } = await this.#decide(principal, request);
    const now = this.#clock.now();
    const credential = newSecret('jitc');
    const requirements = requirementsOf(decision);
    const pending = requirements.length > 0;
    const approvalDeadline = pending ? now + this.#config.approvalTimeoutSeconds * 1000 : null;
    const record: GrantRecord = {
      id: newTimeOrderedId('g', now),
      subject,
      scopes: scopes.map(formatScope),
      reason: request.reason ?? null,
      state: pending ? 'pending' : 'active',
      credentialHash: hashSecret(credential),
      createdAt: now,
      // Pending: only an upper bound until approval sets it (nothing is usable before then).
      expiresAt: (approvalDeadline ?? now) + decision.ttlSeconds * 1000,
      heartbeatDeadline: request.heartbeat === false ? NO_HEARTBEAT : now + this.#config.heartbeatTimeoutSeconds * 1000,
      endedAt: null,
      endReason: null,
      decision: JSON.stringify({ ...decision, ...this.#budgetFor(scopes, decision) }),
      ttlSeconds: decision.ttlSeconds,
      activatedAt: pending ? null : now,
      approvalDeadline,
    };
    // A table grant's role exists before the grant is recorded (NOLOGIN while pending); if
    // recording fails it is dropped, and if the broker dies in between the reconciler drops it.
    const tableResources = this.#tableResources(scopes);
    const tableEnv =
      this.#tables && tableResources.length > 0
        ? await this.#tables.provision(record.id, scopes, { login: !pending, validUntil: new Date(pending ? now : record.expiresAt) })
        : {};
    try {
      await this.#store.insertGrant(record, {
        at: now,
        type: pending ? 'grant.requested' : 'grant.issued',
        subject,
        grantId: record.id,
        scope: record.scopes.join(' '),
        detail: {
          scopes: record.scopes,
          ttlSeconds: decision.ttlSeconds,
          reason: record.reason,
          decision,
          ...(context.source ? { source: context.source } : {}),
        },
      });
    } catch (error) {
      await this.#tables?.deprovision(record.id, tableResources).catch(() => undefined);
      throw error;
    }
    // A new grant has no reviews yet: its view needs no store read.
    const approval =
      approvalDeadline === null
        ? null
        : {
            deadline: iso(approvalDeadline),
            requirements: requirements.map((requirement) => ({ ...requirement, approvedBy: [] })),
            deniedBy: null,
          };
    const fileScopes = scopes.filter((scope) => this.#config.resources[scope.resource]?.kind === 'files');
    const apis = [...new Set(scopes.map((scope) => scope.resource))].flatMap((name): [string, HttpResource][] => {
      const resource = this.#config.resources[name];
      return resource?.kind === 'http' ? [[name, resource]] : [];
    });
    const env = {
      ...(fileScopes.length > 0 ? filesEnv(this.#publicUrl(), credential, { id: record.id, scopes: fileScopes }) : {}),
      ...tableEnv,
      ...httpEnv(this.#publicUrl(), credential, apis),
    };
    return { ...this.view(record, approval), credential, env };
  }

  async get(subject: string, id: string): Promise<GrantView> {
    return this.#view(await this.#owned(subject, id));
  }

  async list(subject: string): Promise<GrantView[]> {
    return Promise.all((await this.#store.listGrants({ subject })).map((grant) => this.#view(grant)));
  }

  /** Any principal's grant: for auditors and admins (docs/principals.md); `get` is the caller's own. */
  async getAny(id: string): Promise<GrantView> {
    return this.#view(await this.#any(id));
  }

  /** Every principal's grants, newest first: for auditors and admins. */
  async listAll(): Promise<GrantView[]> {
    return Promise.all((await this.#store.listGrants({})).map((grant) => this.#view(grant)));
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
    return this.#view(extended);
  }

  /** Revokes `subject`'s own grant, or with `anyOwner` (an admin) anyone's, in `subject`'s name. */
  async revoke(subject: string, id: string, options: { anyOwner?: boolean } = {}): Promise<RevocationReceipt> {
    const find = () => (options.anyOwner ? this.#any(id) : this.#owned(subject, id));
    const grant = await find();
    const now = this.#clock.now();
    await this.#expireIfDue(grant, now);
    if (grant.state === 'pending' && (grant.approvalDeadline ?? 0) <= now) {
      const ended = await this.#timeOut(grant, now);
      return { id, state: ended.state, revokedAt: ended.endedAt === null ? null : iso(ended.endedAt), alreadyEnded: true, actions: [] };
    }
    if (grant.state === 'pending') return this.#cancel(subject, grant, now, options);
    const scopes = grant.scopes.map(parseScope);
    const tableGrant =
      this.#tableResources(scopes).length > 0 && !scopes.some((scope) => this.#config.resources[scope.resource]?.kind === 'files');
    const actions = tableGrant ? [] : ['credential refused by the data plane', 'open transfers cut'];
    const ended = await this.#store.endGrant(id, 'revoked', `revoked by ${subject}`, now, 'active', {
      type: 'grant.revoked',
      detail: { by: subject, actions },
    });
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
    const cleanup = await this.#ended(ended);
    return {
      id,
      state: ended.state,
      revokedAt: iso(now),
      alreadyEnded: false,
      actions: [...actions, ...cleanup.actions],
      ...(cleanup.pending ? { deprovision: 'pending' as const } : {}),
    };
  }

  /** A pending request withdrawn (`jit revoke` on it, Ctrl-C while `jit run` waits). */
  async #cancel(subject: string, grant: GrantRecord, now: number, options: { anyOwner?: boolean }): Promise<RevocationReceipt> {
    const ended = await this.#store.endGrant(grant.id, 'cancelled', `cancelled by ${subject}`, now, 'pending', {
      type: 'grant.cancelled',
      detail: { by: subject },
    });
    // Approved, denied or timed out meanwhile: revoke what it became.
    if (!ended) return this.revoke(subject, grant.id, options);
    const cleanup = await this.#ended(ended);
    return {
      id: grant.id,
      state: 'cancelled',
      revokedAt: iso(now),
      alreadyEnded: false,
      actions: ['request withdrawn', ...cleanup.actions],
      ...(cleanup.pending ? { deprovision: 'pending' as const } : {}),
    };
  }

  /** Pending requests `reviewer` may approve or deny and has not reviewed yet, oldest first. */
  async reviewable(reviewer: string): Promise<GrantView[]> {
    const pending = await this.#store.listGrants({ states: ['pending'] });
    const now = this.#clock.now();
    const mine = pending.filter(
      (grant) =>
        (grant.approvalDeadline ?? 0) > now && mayReview(requirementsOf(parseDecision(grant)), reviewer, grant.subject, this.#config),
    );
    const views = await Promise.all(mine.reverse().map((grant) => this.#view(grant)));
    return views.filter((view) => !view.approval?.requirements.some((requirement) => requirement.approvedBy.includes(reviewer)));
  }

  /**
   * One approval. When it completes every requirement, the grant becomes active with its TTL
   * counted from now; the requester's waiting `jit run` sees that on its next heartbeat.
   */
  async approve(reviewer: string, id: string, reason: string | undefined): Promise<GrantView> {
    const { grant, requirements } = await this.#forReview(reviewer, id, 'approve');
    const now = this.#clock.now();
    await this.#recordVerdict(
      grant,
      { approver: reviewer, verdict: 'approve', reason: reason ?? null, at: now },
      aboutGrant(grant, now, { type: 'grant.approved', detail: { by: reviewer, reason: reason ?? null } }),
    );
    const status = statusOf(requirements, await this.#store.listApprovals(id), grant.subject, this.#config);
    if (allMet(status)) {
      const expiresAt = now + grant.ttlSeconds * 1000;
      const activated = await this.#store.activateGrant(
        id,
        { activatedAt: now, expiresAt },
        {
          type: 'grant.activated',
          actor: reviewer,
          detail: { approvedBy: [...new Set(status.flatMap((requirement) => requirement.approvedBy))], expiresAt: iso(expiresAt) },
        },
      );
      if (activated) {
        await this.#providerStep(activated, 'activate', (resources) =>
          this.#tables?.setValidity(id, resources, { login: true, validUntil: new Date(activated.expiresAt) }),
        );
      }
    }
    return this.#view((await this.#store.getGrant(id)) ?? grant);
  }

  /** A denial ends the request at once, whatever other approvers said. */
  async deny(reviewer: string, id: string, reason: string): Promise<GrantView> {
    const { grant } = await this.#forReview(reviewer, id, 'deny');
    const now = this.#clock.now();
    await this.#recordVerdict(grant, { approver: reviewer, verdict: 'deny', reason, at: now });
    const ended = await this.#store.endGrant(id, 'denied', `denied by ${reviewer}: ${reason}`, now, 'pending', {
      type: 'grant.denied',
      detail: { by: reviewer, reason },
    });
    if (ended) await this.#ended(ended);
    return this.#view((await this.#store.getGrant(id)) ?? grant);
  }

  /** A reviewer's verdict, with its audit event (when it has one of its own) in the same transaction. */
  async #recordVerdict(grant: GrantRecord, verdict: Omit<ApprovalRecord, 'grantId'>, event?: AuditEvent): Promise<void> {
    if (await this.#store.addApproval({ grantId: grant.id, ...verdict }, event)) return;
    throw new ConflictError(`${verdict.approver} has already reviewed grant ${grant.id}`, {
      code: 'already_reviewed',
      hint: 'each approver reviews a request once; `jit approvals` lists what still waits for you',
    });
  }

  /**
   * The pending grant `reviewer` is about to approve or deny, refused when they may not: the
   * requester themself (403, no self-approval), not an approver of its rules (403), or no
   * longer pending (409).
   */
  async #forReview(reviewer: string, id: string, verb: 'approve' | 'deny'): Promise<{ grant: GrantRecord; requirements: Requirement[] }> {
    const grant = await this.#store.getGrant(id);
    if (!grant)
      throw new NotFoundError(`no grant ${id}`, { hint: '`jit approvals` (GET /v1/approvals) lists the requests waiting for you' });
    const requirements = requirementsOf(parseDecision(grant));
    if (grant.subject === reviewer) {
      throw new ForbiddenError(`you cannot ${verb} your own request ${id}`, {
        code: 'self_approval',
        hint: `ask one of its approvers: ${describeRequirements(requirements) || 'none (it needed no approval)'}`,
      });
    }
    if (!mayReview(requirements, reviewer, grant.subject, this.#config)) {
      throw new ForbiddenError(
        requirements.length === 0
          ? `grant ${id} needed no approval`
          : `${reviewer} is not an approver of grant ${id} (it needs ${describeRequirements(requirements)})`,
        { code: 'not_an_approver', hint: 'approvers are set per rule in the broker policy (docs/policy.md#approval)' },
      );
    }
    const now = this.#clock.now();
    const current = grant.state === 'pending' && (grant.approvalDeadline ?? 0) <= now ? await this.#timeOut(grant, now) : grant;
    if (current.state !== 'pending') {
      throw new ConflictError(`grant ${id} is ${current.state}${current.endReason ? ` (${current.endReason})` : ''}, not pending`, {
        code: 'not_pending',
        hint: 'only a pending request can be approved or denied',
      });
    }
    return { grant: current, requirements };
  }

  #tableResources(scopes: readonly Scope[]): string[] {
    return this.#tables?.resourcesOf(scopes) ?? [];
  }

  /**
   * What a grant's end does beyond the store: its database role dropped, its sessions terminated.
   * A drop that fails (the database is down) is saved and retried with capped back-off by the
   * sweeper, never abandoned; meanwhile the grant shows `deprovision: "pending"`.
   */
  async #ended(grant: GrantRecord): Promise<{ actions: string[]; pending: boolean }> {
    const resources = this.#tableResources(grant.scopes.map(parseScope));
    if (!this.#tables || resources.length === 0) return { actions: [], pending: false };
    try {
      const actions = await this.#tables.deprovision(grant.id, resources);
      await this.#audit('grant.deprovisioned', grant, { resources, actions, attempt: 1 });
      return { actions, pending: false };
    } catch (error) {
      const now = this.#clock.now();
      const message = (error as Error).message;
      const nextAttemptAt = now + backoffMs(1);
      await this.#store.saveDeprovision({
        grantId: grant.id,
        resources,
        attempts: 1,
        nextAttemptAt,
        lastError: message,
        createdAt: now,
        doneAt: null,
      });
      await this.#audit('grant.deprovision_failed', grant, { resources, error: message, attempt: 1, nextAttemptAt: iso(nextAttemptAt) });
      return { actions: [`dropping its database role is pending (${message}); retried until done`], pending: true };
    }
  }

  /** Retries the cleanups that are due, each claimed by one replica; back-off doubles up to 5 minutes. */
  async #retryDeprovisions(now: number): Promise<void> {
    if (!this.#tables) return;
    for (const due of await this.#store.claimDeprovisions(now, now + 60_000, 50)) {
      const grant = await this.#store.getGrant(due.grantId);
      const attempt = due.attempts + 1;
      try {
        const actions = await this.#tables.deprovision(due.grantId, due.resources);
        await this.#store.saveDeprovision({ ...due, attempts: attempt, lastError: null, doneAt: this.#clock.now() });
        if (grant) await this.#audit('grant.deprovisioned', grant, { resources: due.resources, actions, attempt });
      } catch (error) {
        const message = (error as Error).message;
        const nextAttemptAt = this.#clock.now() + backoffMs(attempt);
        await this.#store.saveDeprovision({ ...due, attempts: attempt, nextAttemptAt, lastError: message });
        if (grant) {
          await this.#audit('grant.deprovision_failed', grant, {
            resources: due.resources,
            error: message,
            attempt,
            nextAttemptAt: iso(nextAttemptAt),
          });
        }
      }
    }
  }

  /** Every minute: drops database roles whose grant is not live (orphans of crashes); see TableProvider.reconcile. */
  async #reconcile(now: number): Promise<void> {
    if (!this.#tables || now - this.#lastReconcile < RECONCILE_EVERY_MS) return;
    this.#lastReconcile = now;
    const dropped = await this.#tables.reconcile(async (grantId) => {
      const grant = await this.#store.getGrant(grantId);
      return grant?.state === 'active' || grant?.state === 'pending';
    }, now);
    if (dropped.length > 0) {
      await this.#store.appendEvent({
        at: now,
        type: 'provider.orphans_dropped',
        subject: null,
        grantId: null,
        detail: { roles: dropped },
      });
    }
  }

  /** Resolves when no sweep is running (the broker waits for one before closing its store). */
  async sweeping(): Promise<void> {
    await this.#sweeping?.catch(() => undefined);
  }

  /** Runs the reconciler now (broker start; tests). */
  async reconcileNow(): Promise<void> {
    this.#lastReconcile = 0;
    await this.#reconcile(this.#clock.now());
  }

  /** A provider step of activation or renewal; a failure is audited (the grant itself stands). */
  async #providerStep(grant: GrantRecord, step: string, run: (resources: string[]) => Promise<void> | undefined): Promise<void> {
    const resources = this.#tableResources(grant.scopes.map(parseScope));
    if (resources.length === 0) return;
    try {
      await run(resources);
    } catch (error) {
      await this.#audit('grant.provider_error', grant, { step, resources, error: (error as Error).message });
    }
  }

  /** Ends a pending grant past its approval deadline as the sweeper would; returns its state now. */
  async #timeOut(grant: GrantRecord, now: number): Promise<GrantRecord> {
    const ended = await this.#store.endGrant(grant.id, 'timed-out', 'approval timeout', now, 'pending', {
      type: 'grant.timed-out',
      detail: { reason: 'approval timeout', by: 'system' },
    });
    if (ended) await this.#ended(ended);
    return ended ?? (await this.#store.getGrant(grant.id)) ?? grant;
  }

  /**
   * Moves the expiry of a live grant to now + `ttlSeconds` (default: its own TTL), never past
   * the policy's max TTL counted from activation, so a long job keeps its credential (which does
   * not change) for as long as the policy allows and no longer. The policy is asked again: a
   * subject that has lost access since cannot renew. Approval is not asked again: it was given
   * for up to the max.
   */
  async renew(requester: Requester, id: string, ttlSeconds: number | undefined): Promise<GrantView> {
    const principal = this.#principal(requester);
    const { subject } = principal;
    const grant = await this.#owned(subject, id);
    const now = this.#clock.now();
    await this.#expireIfDue(grant, now);
    const current = (await this.#store.getGrant(id)) ?? grant;
    if (current.state !== 'active') {
      throw new ConflictError(`grant ${id} is ${current.state}${current.endReason ? ` (${current.endReason})` : ''}`, {
        code: current.state === 'pending' ? 'not_active' : 'grant_ended',
        hint: current.state === 'pending' ? 'it can be renewed once approved' : 'request a new grant',
      });
    }
    const original = parseDecision(current);
    const decision = await this.#audited(subject, { scopes: current.scopes, ttlSeconds, reason: `renewal of ${id}` }, () =>
      evaluate(this.#config, principal, current.scopes.map(parseScope), ttlSeconds),
    );
    const maxSeconds = Math.min(original.maxTtlSeconds ?? decision.maxTtlSeconds, decision.maxTtlSeconds);
    const since = current.activatedAt ?? current.createdAt;
    const cap = since + maxSeconds * 1000;
    // A renewal never reaches past the end of the CI session that renews (the decision refused a longer ttlSeconds).
    const sessionEnd = now + (principal.sessionSecondsLeft ?? Number.POSITIVE_INFINITY) * 1000;
    const target = Math.min(now + (ttlSeconds ?? current.ttlSeconds) * 1000, cap, sessionEnd);
    if (target <= current.expiresAt) {
      const capped = target === cap;
      throw new ConflictError(
        capped
          ? `grant ${id} already runs to ${iso(current.expiresAt)}, the end of its policy's max TTL (${formatDuration(maxSeconds)} from ${iso(since)})`
          : `grant ${id} already runs to ${iso(current.expiresAt)}, later than that renewal would`,
        {
          code: capped ? 'renewal_capped' : 'renewal_not_later',
          hint: capped ? 'request a new grant to go on after it ends' : 'ask for a longer TTL (ttlSeconds, jit renew --ttl)',
        },
      );
    }
    const renewed = await this.#store.renewGrant(id, target, now, {
      type: 'grant.renewed',
      detail: { by: subject, from: iso(current.expiresAt), to: iso(target), capped: target === cap },
    });
    if (!renewed) {
      const ended = (await this.#store.getGrant(id)) ?? current;
      throw new ConflictError(`grant ${id} is ${ended.state}`, { code: 'grant_ended', hint: 'request a new grant' });
    }
    await this.#providerStep(renewed, 'renew', (resources) =>
      this.#tables?.setValidity(id, resources, { login: true, validUntil: new Date(renewed.expiresAt) }),
    );
    return this.#view(renewed);
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
      const abandoned = await this.#store.timeOutPending(now, EXPIRE_BATCH);
      for (const grant of expired) this.#cutStreams(grant.id);
      for (const grant of [...expired, ...abandoned]) await this.#ended(grant);
      total += expired.length + abandoned.length;
      if (expired.length < EXPIRE_BATCH && abandoned.length < EXPIRE_BATCH) {
        await this.#retryDeprovisions(now);
        await this.#reconcile(now);
        return total;
      }
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
    const reason = now >= grant.expiresAt ? 'ttl' : 'heartbeat';
    const ended = await this.#store.endGrant(grant.id, 'expired', reason, now, 'active', {
      type: 'grant.expired',
      detail: { reason, by: 'system' },
    });
    if (!ended) return;
    this.#cutStreams(ended.id);
    await this.#ended(ended);
  }

  /** The broker's clock, epoch ms (what SigV4's clock-skew window is judged by). */
  now(): number {
    return this.#clock.now();
  }

  /**
   * Finds the grant behind a job's credential and says whether it is usable right now; the data
   * planes' one check (files endpoint, S3 gateway). Nothing is recorded here.
   */
  async checkCredential(credential: string): Promise<CredentialCheck> {
    const grant = credential ? await this.#store.findGrantByCredentialHash(hashSecret(credential)) : undefined;
    if (!grant) return { usable: false, grant: undefined, reason: 'unknown_credential' };
    const now = this.#clock.now();
    if (grant.state === 'active' && now < grant.expiresAt && now < grant.heartbeatDeadline) {
      return { usable: true, grant, scopes: grant.scopes.map(parseScope) };
    }
    return { usable: false, grant, reason: grant.state === 'pending' ? 'grant_pending' : 'grant_ended' };
  }

  /**
   * The grant behind a job's credential, if it is usable right now, for the files endpoint. A
   * refusal is audited too (without the credential): probing with dead credentials shows up.
   */
  async usableGrant(credential: string | undefined): Promise<{ grant: GrantRecord; scopes: Scope[] }> {
    const check = await this.checkCredential(credential ?? '');
    if (check.usable) return check;
    const { grant } = check;
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
    await this.#audit('data.refused', grant, { reason: check.reason, state: grant.state });
    if (check.reason === 'grant_pending') {
      throw new AuthError(`grant ${grant.id} is waiting for approval`, {
        code: 'grant_pending',
        hint: 'its credential works once the grant is approved (`jit run` waits for that)',
      });
    }
    throw new AuthError(`grant ${grant.id} is no longer active`, { code: 'grant_ended', hint: 'request a new grant with `jit run`' });
  }

  /**
   * The tightest budget of the rules that allow a grant's API scopes (docs/http.md#budgets), kept
   * with the decision; none when no such rule has one.
   */
  #budgetFor(scopes: readonly Scope[], decision: AllowedDecision): { budget?: Budget } {
    const budgets = decision.explanation
      .filter((scope, index) => this.#config.resources[scopes[index]?.resource ?? '']?.kind === 'http' && scope.rule !== null)
      .map((scope) => this.#config.rules.find((rule) => rule.name === scope.rule)?.budget)
      .filter((budget) => budget !== undefined);
    if (budgets.length === 0) return {};
    const tightest = (key: keyof Budget) => {
      const limits = budgets.map((budget) => budget[key]).filter((limit) => limit !== undefined);
      return limits.length > 0 ? { [key]: Math.min(...limits) } : {};
    };
    return { budget: { ...tightest('requests'), ...tightest('bytes') } };
  }

  /**
   * Counts an API call (or its response bytes) against the grant's budget. Over budget, the grant
   * is suspended: it ends at once (its streams cut, its credential refused everywhere), and says
   * why in the audit trail. Grants without a budget cost no store write.
   */
  async consume(grant: GrantRecord, requests: number, bytes: number): Promise<{ allowed: boolean; reason?: string }> {
    const budget = this.#budgetOf(grant);
    if (!budget) return { allowed: true };
    const usage = await this.#store.addUsage(grant.id, requests, bytes);
    const over =
      budget.requests !== undefined && usage.requests > budget.requests
        ? `its budget of ${budget.requests} requests is used up`
        : budget.bytes !== undefined && usage.bytes > budget.bytes
          ? `its budget of ${budget.bytes} bytes is used up (${usage.bytes})`
          : undefined;
    if (over === undefined) return { allowed: true };
    const now = this.#clock.now();
    const suspended = await this.#store.endGrant(grant.id, 'suspended', over, now, 'active', {
      type: 'grant.suspended',
      detail: { reason: over, usage, budget, by: 'system' },
    });
    if (suspended) {
      this.#cutStreams(grant.id);
      await this.#ended(suspended);
    }
    return { allowed: false, reason: over };
  }

  /** A grant's budget, from its (immutable) decision; remembered per grant so a call parses no JSON. */
  #budgetOf(grant: GrantRecord): Budget | undefined {
    if (this.#budgets.has(grant.id)) return this.#budgets.get(grant.id);
    const { budget } = parseDecision(grant) as Decision & { budget?: Budget };
    if (this.#budgets.size >= 10_000) this.#budgets.delete(this.#budgets.keys().next().value ?? '');
    this.#budgets.set(grant.id, budget);
    return budget;
  }

  /** A grant's audit trail, oldest first. */
  events(grantId: string): Promise<AuditEvent[]> {
    return this.#store.listEvents({ grantId });
  }

  /** One data touch (or refusal) on the audit trail: `data.read`, `data.write`, `data.delete`, `data.refused`. */
  async recordDataAccess(grant: GrantRecord, detail: Record<string, unknown>, type = 'data.read', source?: string): Promise<void> {
    // A touch that failed (no such file, upstream error) is an error on the trail, not a success.
    const failed =
      (typeof detail.outcome === 'string' && detail.outcome !== 'allowed') || (typeof detail.status === 'number' && detail.status >= 400);
    const outcome = type === 'data.refused' ? 'denied' : failed ? 'error' : 'ok';
    await this.#audit(type, grant, source ? { ...detail, source } : detail, outcome);
  }

  /**
   * A file stream that dies with its grant: revocation and expiry cut transfers already under
   * way, not just new requests. (This replica's streams only; see docs/architecture.md.)
   */
  openForGrant(grantId: string, file: string, size: number): ReadStream {
    return this.trackStream(grantId, createReadStream(file), size);
  }

  /** Any stream of `size` bytes served under a grant, cut like openForGrant's when the grant ends. */
  trackStream<T extends Readable>(grantId: string, stream: T, size: number): T {
    const open = this.#streams.get(grantId) ?? new Map<Readable, number>();
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
      const read = (stream as Partial<ReadStream>).bytesRead ?? 0;
      if (!stream.readableEnded && read < size) stream.destroy(new Error(`grant ${grantId} ended`));
    }
  }

  /**
   * Parses and decides a request. A refusal (bad scope, policy, TTL) is an audit record too,
   * with what was asked and why it was refused: every decision is on the trail.
   */
  #decide(principal: Principal, request: GrantRequest): Promise<{ scopes: Scope[]; decision: AllowedDecision }> {
    return this.#audited(principal.subject, request, async () => {
      const scopes = request.scopes.map((text) => checkScope(this.#config.resources, parseScope(text)));
      const decision = evaluate(this.#config, principal, scopes, request.ttlSeconds);
      // Tables and columns must exist and be offered: refused before any role is created.
      if (this.#tableResources(scopes).length > 0) await this.#tables?.check(scopes);
      return { scopes, decision };
    });
  }

  async #audited<T>(subject: string, request: GrantRequest, decide: () => T | Promise<T>): Promise<T> {
    try {
      return await decide();
    } catch (error) {
      if (error instanceof JitError) {
        await this.#store.appendEvent({
          at: this.#clock.now(),
          type: 'grant.refused',
          subject,
          grantId: null,
          scope: request.scopes.join(' '),
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

  /** The grant as the API shows it, with where its approval stands when it needed one. */
  async #view(grant: GrantRecord): Promise<GrantView> {
    // An ended table grant whose role is not dropped yet says so (docs/postgres.md#revocation).
    const cleanup =
      grant.endedAt !== null && this.#tableResources(grant.scopes.map(parseScope)).length > 0
        ? await this.#store.getDeprovision(grant.id)
        : undefined;
    const extra = cleanup && cleanup.doneAt === null ? { deprovision: 'pending' as const } : {};
    const requirements = requirementsOf(parseDecision(grant));
    if (requirements.length === 0) return { ...this.view(grant), ...extra };
    const verdicts = await this.#store.listApprovals(grant.id);
    const denial = verdicts.find((verdict) => verdict.verdict === 'deny');
    const approval = {
      deadline: iso(grant.approvalDeadline ?? grant.createdAt),
      requirements: statusOf(requirements, verdicts, grant.subject, this.#config),
      deniedBy: denial ? { approver: denial.approver, reason: denial.reason } : null,
    };
    return { ...this.view(grant, approval), ...extra };
  }

  /** The grant as the API shows it; `approval` as #view worked it out (it needs the store). */
  view(grant: GrantRecord, approval: ApprovalView | null = null): GrantView {
    return {
      id: grant.id,
      subject: grant.subject,
      scopes: grant.scopes,
      reason: grant.reason,
      state: grant.state,
      createdAt: iso(grant.createdAt),
      activatedAt: grant.activatedAt === null ? null : iso(grant.activatedAt),
      expiresAt: grant.activatedAt === null ? null : iso(grant.expiresAt),
      ttlSeconds: grant.ttlSeconds,
      heartbeatDeadline: grant.heartbeatDeadline >= NO_HEARTBEAT ? null : iso(grant.heartbeatDeadline),
      heartbeatIntervalSeconds: Math.max(1, Math.floor(this.#config.heartbeatTimeoutSeconds / 3)),
      endedAt: grant.endedAt === null ? null : iso(grant.endedAt),
      endReason: grant.endReason,
      approval,
    };
  }

  /** Who asks, for the policy: a CI session's claims and the seconds it has left come along. */
  #principal(requester: Requester): Principal {
    if (typeof requester === 'string') return { subject: requester };
    const { subject, claims, sessionExpiresAt } = requester;
    return {
      subject,
      ...(claims ? { claims } : {}),
      ...(sessionExpiresAt === undefined ? {} : { sessionSecondsLeft: (sessionExpiresAt - this.#clock.now()) / 1000 }),
    };
  }

  async #owned(subject: string, id: string): Promise<GrantRecord> {
    const grant = await this.#store.getGrant(id);
    if (!grant || grant.subject !== subject) throw new NotFoundError(`no grant ${id}`, { hint: 'list your grants with `jit grants`' });
    return grant;
  }

  async #any(id: string): Promise<GrantRecord> {
    const grant = await this.#store.getGrant(id);
    if (!grant) throw new NotFoundError(`no grant ${id}`, { hint: 'list your grants with `jit grants`' });
    return grant;
  }

  async #audit(type: string, grant: GrantRecord, detail: Record<string, unknown>, outcome?: string): Promise<void> {
    await this.#store.appendEvent({ ...aboutGrant(grant, this.#clock.now(), { type, detail }), ...(outcome ? { outcome } : {}) });
  }
}
