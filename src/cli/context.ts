import { BrokerClient } from '../client/broker-client.ts';
import { type GrantAuth, LocalConfig, type LocalGrant } from '../config/local.ts';
import { AuthError, UsageError } from '../core/errors.ts';
import { sameUrl } from '../core/url.ts';
import { accounts, type KeychainMode, openSecretStore, type SecretStore } from '../secrets/store.ts';
import type { Output } from './output.ts';

export type GlobalOptions = {
  json: boolean;
  verbose: boolean;
  profile: string;
  keychain: KeychainMode;
  /** --broker: this command's broker, in place of JIT_BROKER_URL and the profile's. */
  broker?: string;
};

export type Session = { client: BrokerClient; profile: string; brokerUrl: string; auth: GrantAuth };

/**
 * What every command handler receives: the global options, output, local config, the secret
 * store (opened on first use) and the broker session. No client or token lives in a module.
 */
export type Context = {
  options: GlobalOptions;
  env: NodeJS.ProcessEnv;
  out: Output;
  config: LocalConfig;
  /** Whether a prompt may be shown: a person at a terminal (see Output.interactive) and `CI` unset. */
  readonly interactive: boolean;
  secrets(): Promise<SecretStore>;
  session(): Promise<Session>;
  /** A client for a grant in the local index, with the same kind of token that requested it (or none). */
  clientForGrant(grant: LocalGrant, tuning?: { timeoutMs?: number; retries?: number }): Promise<BrokerClient>;
};

export function createContext(options: GlobalOptions, out: Output, env: NodeJS.ProcessEnv = process.env): Context {
  const config = new LocalConfig(env.JIT_CONFIG_DIR || undefined);
  let secrets: Promise<SecretStore> | undefined;
  // --broker counts as an explicitly given broker URL, exactly like JIT_BROKER_URL (and wins over it).
  const explicitBrokerUrl = options.broker || env.JIT_BROKER_URL || undefined;

  const openSecrets = () => {
    secrets ??= openSecretStore(options.keychain, bindingOverride(env)).then((store) => {
      if (store.backend === 'memory' && options.keychain === 'auto') {
        out.warn(`no OS keychain reachable, keeping credentials in memory only (${store.fallbackReason}); see docs/keychain.md`);
      }
      return store;
    });
    return secrets;
  };

  /**
   * A token is only ever sent to the broker it belongs to: JIT_TOKEN to the URL given explicitly
   * (--broker, else JIT_BROKER_URL), a profile's keychain token to that profile's broker. Anything
   * else would hand a standing token to whatever URL a flag or an environment variable names.
   */
  const credentials = async (profile: string, brokerUrl: string, auth: GrantAuth): Promise<string | undefined> => {
    if (auth === 'env') return env.JIT_TOKEN && explicitBrokerUrl && sameUrl(explicitBrokerUrl, brokerUrl) ? env.JIT_TOKEN : undefined;
    const profileUrl = config.profile(profile)?.brokerUrl;
    return profileUrl && sameUrl(profileUrl, brokerUrl) ? (await openSecrets()).get(accounts.token(profile)) : undefined;
  };

  const context: Context = {
    options,
    env,
    out,
    config,
    get interactive() {
      return out.interactive && !env.CI;
    },
    secrets: openSecrets,
    async session() {
      const profile = options.profile;
      if (env.JIT_TOKEN && !explicitBrokerUrl) {
        throw new UsageError('JIT_TOKEN is set but JIT_BROKER_URL is not', {
          hint: 'set both, or pass --broker (a token is only sent to the broker it is for)',
        });
      }
      const auth: GrantAuth = env.JIT_TOKEN ? 'env' : 'profile';
      const brokerUrl = explicitBrokerUrl || config.profile(profile)?.brokerUrl;
      if (!brokerUrl) {
        throw new AuthError(`no broker configured for profile "${profile}"`, {
          hint: 'run `jit login --broker URL`, or set JIT_BROKER_URL and JIT_TOKEN',
        });
      }
      const token = await credentials(profile, brokerUrl, auth);
      if (!token)
        throw new AuthError(`not logged in to ${brokerUrl}`, { hint: `run \`jit login --broker ${brokerUrl}\`, or set JIT_TOKEN for it` });
      return { client: new BrokerClient({ brokerUrl, token }), profile, brokerUrl, auth };
    },
    async clientForGrant(grant, tuning = {}) {
      return new BrokerClient({
        brokerUrl: grant.brokerUrl,
        token: await credentials(grant.profile, grant.brokerUrl, grant.auth),
        ...tuning,
      });
    },
  };
  return context;
}

/** JIT_KEYCHAIN_BINDING pins one keychain binding (keytar or napi-keyring); tests use it to cover both. */
function bindingOverride(env: NodeJS.ProcessEnv): 'keytar' | 'napi-keyring' | undefined {
  const value = env.JIT_KEYCHAIN_BINDING;
  return value === 'keytar' || value === 'napi-keyring' ? value : undefined;
}
