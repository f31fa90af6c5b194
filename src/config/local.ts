import Conf from 'conf';

/**
 * What jit keeps on this machine besides secrets (README, "Configuration"): profiles (broker URL,
 * default TTL) and the index of grants this machine holds, so `jit grants` works offline and a
 * later jit can finish revocations a killed wrapper left behind. No secret is ever written here.
 */
export type Profile = { brokerUrl: string; defaultTtl?: string };

export type LocalGrantState = 'active' | 'revoke-pending';

/** Which token requested a grant: JIT_TOKEN (with JIT_BROKER_URL) or the profile's keychain token. */
export type GrantAuth = 'env' | 'profile';

/** The `jit run` process holding a grant, precisely enough to tell later whether it is gone. */
export type Wrapper = { pid: number; host: string; bootId: string; startTicks: number };

export type LocalGrant = {
  id: string;
  profile: string;
  brokerUrl: string;
  auth: GrantAuth;
  scopes: string[];
  pid: number;
  wrapper: Wrapper;
  command: string;
  createdAt: string;
  expiresAt: string;
  state: LocalGrantState;
};

type Schema = {
  profiles: Record<string, Profile>;
  grants: Record<string, LocalGrant>;
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

  profile(name: string): Profile | undefined {
    return this.#conf.get('profiles')[name];
  }

  setProfile(name: string, profile: Profile): void {
    this.#conf.set('profiles', { ...this.#conf.get('profiles'), [name]: profile });
  }

  removeProfile(name: string): boolean {
    const { [name]: removed, ...rest } = this.#conf.get('profiles');
    this.#conf.set('profiles', rest);
    return removed !== undefined;
  }

  grants(): LocalGrant[] {
    return Object.values(this.#conf.get('grants')).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  grant(id: string): LocalGrant | undefined {
    return this.#conf.get('grants')[id];
  }

  putGrant(grant: LocalGrant): void {
    this.#conf.set('grants', { ...this.#conf.get('grants'), [grant.id]: grant });
  }

  removeGrant(id: string): void {
    const { [id]: _removed, ...rest } = this.#conf.get('grants');
    this.#conf.set('grants', rest);
  }
}
