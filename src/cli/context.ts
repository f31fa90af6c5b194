import { BrokerClient } from '../client/broker-client.ts';
import { LocalConfig } from '../config/local.ts';
import { AuthError } from '../core/errors.ts';
import { accounts, type KeychainMode, openSecretStore, type SecretStore } from '../secrets/store.ts';
import type { Output } from './output.ts';

export type GlobalOptions = { json: boolean; verbose: boolean; profile: string; keychain: KeychainMode };

export type Session = { client: BrokerClient; profile: string; brokerUrl: string };

/**
 * What every command handler receives: the global options, output, local config, the secret
 * store (opened on first use) and the broker session. No client or token lives in a module.
 */
export type Context = {
  options: GlobalOptions;
  env: NodeJS.ProcessEnv;
  out: Output;
  config: LocalConfig;
  secrets(): Promise<SecretStore>;
  session(): Promise<Session>;
  /** A client for a broker URL recorded elsewhere (the local grant index), with that profile's token. */
  clientFor(brokerUrl: string, profile: string, tuning?: { timeoutMs?: number; retries?: number }): Promise<BrokerClient>;
};

export function createContext(options: GlobalOptions, out: Output, env: NodeJS.ProcessEnv = process.env): Context {
  const config = new LocalConfig(env.JIT_CONFIG_DIR || undefined);
  let secrets: Promise<SecretStore> | undefined;

  const openSecrets = () => {
    secrets ??= openSecretStore(options.keychain, bindingOverride(env)).then((store) => {
      if (store.backend === 'memory' && options.keychain === 'auto') {
        out.warn(`no OS keychain reachable, keeping credentials in memory only (${store.fallbackReason}); see docs/keychain.md`);
      }
      return store;
    });
    return secrets;
  };

  /** JIT_TOKEN wins; otherwise the profile's token from the keychain. */
  const tokenFor = async (profile: string, brokerUrl: string): Promise<string | undefined> => {
    if (env.JIT_TOKEN && (!env.JIT_BROKER_URL || sameUrl(env.JIT_BROKER_URL, brokerUrl))) return env.JIT_TOKEN;
    return (await openSecrets()).get(accounts.token(profile));
  };

  const context: Context = {
    options,
    env,
    out,
    config,
    secrets: openSecrets,
    async session() {
      const brokerUrl = env.JIT_BROKER_URL || config.profile(options.profile)?.brokerUrl;
      if (!brokerUrl) {
        throw new AuthError(`no broker configured for profile "${options.profile}"`, {
          hint: 'run `jit login --broker URL`, or set JIT_BROKER_URL and JIT_TOKEN',
        });
      }
      const token = await tokenFor(options.profile, brokerUrl);
      if (!token) throw new AuthError(`not logged in to ${brokerUrl}`);
      return { client: new BrokerClient({ brokerUrl, token }), profile: options.profile, brokerUrl };
    },
    async clientFor(brokerUrl, profile, tuning = {}) {
      return new BrokerClient({ brokerUrl, token: await tokenFor(profile, brokerUrl), ...tuning });
    },
  };
  return context;
}

function sameUrl(a: string, b: string): boolean {
  return a.replace(/\/+$/, '') === b.replace(/\/+$/, '');
}

/** JIT_KEYCHAIN_BINDING pins one keychain binding (keytar or napi-keyring); tests use it to cover both. */
function bindingOverride(env: NodeJS.ProcessEnv): 'keytar' | 'napi-keyring' | undefined {
  const value = env.JIT_KEYCHAIN_BINDING;
  return value === 'keytar' || value === 'napi-keyring' ? value : undefined;
}
