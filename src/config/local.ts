import { closeSync, mkdirSync, openSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import Conf from 'conf';
import { ExitCode, JitError } from '../core/errors.ts';

const LOCK_WAIT_MS = 5_000;
const LOCK_STALE_MS = 10_000;

/**
 * What jit keeps on this machine besides secrets (README, "Configuration"): profiles (broker URL,
 * default TTL) and the index of grants this machine holds, so `jit grants` works offline and a
 * later jit can finish revocations a killed wrapper left behind. No secret is ever written here.
 */
export type Profile = { brokerUrl: string; defaultTtl?: string };

/** pending: waiting for approval; revoke-pending: ended here, the broker not yet told. */
export type LocalGrantState = 'pending' | 'active' | 'revoke-pending' | 'suspended';

/**
 * Which token requested a grant: JIT_TOKEN (with JIT_BROKER_URL), the profile's keychain token, or
 * a session exchanged for the CI job's OIDC identity token (exchanged again by a later command).
 */
export type GrantAuth = 'env' | 'profile' | 'oidc';

/** The `jit run` process holding a grant, precisely enough to tell later whether it is gone. */
export type Wrapper = { pid: number; host: string; bootId: string; startTicks: number };

export type LocalGrant = {
  id: string;
  profile: string;
  brokerUrl: string;
  auth: GrantAuth;
  scopes: string[];
  /** The holding `jit run`; null for a grant no process holds yet (`jit request`, `jit run --no-wait`). */
  pid: number | null;
  wrapper: Wrapper | null;
  command: string;
  createdAt: string;
  /** null while pending. */
  expiresAt: string | null;
  /** When a pending request times out on the broker (absent in entries from before approvals). */
  approvalDeadline?: string | null;
  state: LocalGrantState;
};

/** The head of a broker's audit chain as `jit audit verify` last verified it: a later, shorter or different chain is a rollback. */
export type VerifiedHead = { position: number; hash: string; at: string };

type Schema = {
  profiles: Record<string, Profile>;
  grants: Record<string, LocalGrant>;
  /**
   * Broker URL -> the audit chain head last verified from here (docs/audit.md#verify). Not in
   * the defaults: conf rewrites a file that lacks a default key, which would change its mode.
   */
  verified?: Record<string, VerifiedHead>;
  /** The profile `jit config use` chose, for commands given no --profile and no JIT_PROFILE (not a default either). */
  activeProfile?: string;
};

export class LocalConfig {
  readonly #conf: Conf<Schema>;

  constructor(directory?: string) {
    this.#conf = new Conf<Schema>({
      projectName: 'jit',
      projectSuffix: '',
      configName: 'config',
      configFileMode: 0o600,
      defaults: { profiles: {}, grants: {} },
      ...(directory ? { cwd: directory } : {}),
    });
  }

  get path(): string {
    return this.#conf.path;
  }

  verifiedHead(brokerUrl: string): VerifiedHead | undefined {
    return this.#conf.get('verified')?.[brokerUrl];
  }

  setVerifiedHead(brokerUrl: string, head: VerifiedHead): void {
    this.#locked(() => this.#conf.set('verified', { ...(this.#conf.get('verified') ?? {}), [brokerUrl]: head }));
  }

  /** The profile `jit config use` chose, if it still exists. */
  activeProfile(): string | undefined {
    const name = this.#conf.get('activeProfile');
    return name !== undefined && this.profile(name) ? name : undefined;
  }

  setActiveProfile(name: string): void {
    this.#locked(() => this.#conf.set('activeProfile', name));
  }

  /** Every profile by name, sorted by name. */
  profiles(): [string, Profile][] {
    return Object.entries(this.#conf.get('profiles')).sort(([a], [b]) => a.localeCompare(b));
  }

  profile(name: string): Profile | undefined {
    return this.#conf.get('profiles')[name];
  }

  setProfile(name: string, profile: Profile): void {
    this.#locked(() => this.#conf.set('profiles', { ...this.#conf.get('profiles'), [name]: profile }));
  }

  removeProfile(name: string): boolean {
    return this.#locked(() => {
      const { [name]: removed, ...rest } = this.#conf.get('profiles');
      this.#conf.set('profiles', rest);
      return removed !== undefined;
    });
  }

  grants(): LocalGrant[] {
    return Object.values(this.#conf.get('grants')).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  grant(id: string): LocalGrant | undefined {
    return this.#conf.get('grants')[id];
  }

  putGrant(grant: LocalGrant): void {
    this.#locked(() => this.#conf.set('grants', { ...this.#conf.get('grants'), [grant.id]: grant }));
  }

  removeGrant(id: string): void {
    this.#locked(() => {
      const { [id]: _removed, ...rest } = this.#conf.get('grants');
      this.#conf.set('grants', rest);
    });
  }

  /**
   * Runs a read-modify-write of the file under an exclusive lock file beside it: parallel jits
   * (several `jit run`s started together) would otherwise each write back the index they read and
   * lose the others' grants. A lock left by a killed jit is broken after LOCK_STALE_MS.
   */
  #locked<T>(change: () => T): T {
    const lock = `${this.#conf.path}.lock`;
    mkdirSync(path.dirname(lock), { recursive: true, mode: 0o700 });
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      try {
        closeSync(openSync(lock, 'wx', 0o600));
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const age = Date.now() - (statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (age > LOCK_STALE_MS) rmSync(lock, { force: true });
      else if (Date.now() > deadline) {
        throw new JitError(`the local config ${this.#conf.path} stayed locked`, ExitCode.unexpected, 500, 'config_locked', {
          hint: `if no other jit is running, remove ${lock}`,
        });
      } else Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
    try {
      return change();
    } finally {
      rmSync(lock, { force: true });
    }
  }
}
