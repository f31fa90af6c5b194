import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { KeychainError, UsageError } from '../core/errors.ts';

/**
 * Where credentials live on this machine: the OS keychain (keytar, or @napi-rs/keyring when
 * keytar's native module is not built), or memory when no keychain service is reachable. Never a
 * file. docs/keychain.md explains the choice and how to set up a headless Linux keychain.
 */
export type SecretBackend = 'keytar' | 'napi-keyring' | 'memory';
export type KeychainMode = 'auto' | 'require' | 'memory';
export const KEYCHAIN_MODES: readonly KeychainMode[] = ['auto', 'require', 'memory'];

export interface SecretStore {
  readonly backend: SecretBackend;
  /** Why the OS keychain was not used, when backend is memory. */
  readonly fallbackReason: string | undefined;
  get(account: string): Promise<string | undefined>;
  set(account: string, secret: string): Promise<void>;
  delete(account: string): Promise<boolean>;
}

export const SERVICE = 'jit';

type KeytarLike = {
  getPassword(service: string, account: string): Promise<string | null>;
  setPassword(service: string, account: string, password: string): Promise<void>;
  deletePassword(service: string, account: string): Promise<boolean>;
};

const require = createRequire(import.meta.url);

const BINDINGS: { backend: Exclude<SecretBackend, 'memory'>; load: () => KeytarLike }[] = [
  { backend: 'keytar', load: () => require('keytar') as KeytarLike },
  { backend: 'napi-keyring', load: () => require('@napi-rs/keyring/keytar') as KeytarLike },
];

const PROBE_TIMEOUT_MS = 5_000;

class KeychainStore implements SecretStore {
  readonly fallbackReason = undefined;
  readonly backend: SecretBackend;
  readonly #binding: KeytarLike;

  constructor(backend: SecretBackend, binding: KeytarLike) {
    this.backend = backend;
    this.#binding = binding;
  }

  get(account: string): Promise<string | undefined> {
    return this.#call('read', async () => (await this.#binding.getPassword(SERVICE, account)) ?? undefined);
  }

  set(account: string, secret: string): Promise<void> {
    return this.#call('write', () => this.#binding.setPassword(SERVICE, account, secret));
  }

  delete(account: string): Promise<boolean> {
    return this.#call('delete', () => this.#binding.deletePassword(SERVICE, account));
  }

  /** A keychain that stops answering mid-command (locked, D-Bus gone) is a keychain error, not a bug. */
  async #call<T>(what: string, operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (error) {
      throw new KeychainError(`the OS keychain refused to ${what} a jit entry (${firstLine(error)})`, {
        hint: 'unlock the keychain (on Linux: gnome-keyring under a D-Bus session; see docs/keychain.md) and retry',
      });
    }
  }
}

export class MemorySecretStore implements SecretStore {
  readonly backend = 'memory' as const;
  readonly fallbackReason: string | undefined;
  readonly #secrets = new Map<string, string>();

  constructor(fallbackReason?: string) {
    this.fallbackReason = fallbackReason;
  }

  async get(account: string): Promise<string | undefined> {
    return this.#secrets.get(account);
  }

  async set(account: string, secret: string): Promise<void> {
    this.#secrets.set(account, secret);
  }

  async delete(account: string): Promise<boolean> {
    return this.#secrets.delete(account);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms / 1000}s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function firstLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? 'unknown error';
}

export function parseKeychainMode(text: string): KeychainMode {
  if ((KEYCHAIN_MODES as readonly string[]).includes(text)) return text as KeychainMode;
  throw new UsageError(`invalid keychain mode "${text}"`, { hint: `use one of: ${KEYCHAIN_MODES.join(', ')}` });
}

/**
 * Opens the first binding that loads and answers a probe read. `only` pins one binding (tests
 * use it to exercise each). In `require` mode an unreachable keychain is an error; in `auto` it
 * falls back to memory and says why.
 */
export async function openSecretStore(mode: KeychainMode, only?: Exclude<SecretBackend, 'memory'>): Promise<SecretStore> {
  if (mode === 'memory') return new MemorySecretStore('memory-only storage was asked for (--keychain memory)');
  const failures: string[] = [];
  for (const { backend, load } of BINDINGS) {
    if (only && backend !== only) continue;
    let binding: KeytarLike;
    try {
      binding = load();
    } catch (error) {
      failures.push(`${backend}: not built (${firstLine(error)})`);
      continue;
    }
    try {
      // A write, not a read: @napi-rs/keyring answers a read with "no such entry" even when no
      // keychain service is reachable, and a locked collection only fails on writes.
      // Each process probes its own entry: parallel jits sharing one would delete each other's.
      const probe = `probe:${process.pid}:${randomBytes(4).toString('hex')}`;
      await withTimeout(
        binding.setPassword(SERVICE, probe, 'probe').then(() => binding.deletePassword(SERVICE, probe)),
        PROBE_TIMEOUT_MS,
        'the keychain service',
      );
      return new KeychainStore(backend, binding);
    } catch (error) {
      failures.push(`${backend}: ${firstLine(error)}`);
    }
  }
  const reason = failures.join('; ');
  if (mode === 'require') {
    throw new KeychainError(`no OS keychain is reachable (${reason})`, {
      hint: 'start a Secret Service (gnome-keyring under a D-Bus session; see docs/keychain.md), or drop --keychain require',
    });
  }
  return new MemorySecretStore(reason);
}

/** Keychain account names: one per profile token, one per live grant credential. */
export const accounts = {
  token: (profile: string) => `token:${profile}`,
  grant: (grantId: string) => `grant:${grantId}`,
};
