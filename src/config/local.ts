import Conf from 'conf';

/**
 * What jit keeps on this machine besides secrets (docs/configuration.md): profiles (broker URL,
 * default TTL) and the index of grants this machine holds, so `jit grants` works offline and a
 * later jit can finish revocations a killed wrapper left behind. No secret is ever written here.
 */
export type Profile = { brokerUrl: string; defaultTtl?: string };

export type LocalGrantState = 'active' | 'revoke-pending';

export type LocalGrant = {
  id: string;
  profile: string;
  brokerUrl: string;
  scopes: string[];
  pid: number;
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
