import { BrokerClient, type OidcSessionView } from '../client/broker-client.ts';
import { ciIdentityToken, oidcAudience, oidcSource } from '../client/oidc.ts';
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

/** The global options as given: with no --profile and no JIT_PROFILE, the profile comes from the local config. */
export type GlobalFlags = Omit<GlobalOptions, 'profile'> & { profile?: string };

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
  /**
   * A session for the CI job's OIDC identity token at `brokerUrl`, exchanged once per process
   * (docs/ci.md#oidc); undefined when the environment offers no token. Nothing of it is stored.
   */
  oidcSession(brokerUrl: string): Promise<OidcSessionView | undefined>;
  /** A client for a grant in the local index, with the same kind of token that requested it (or none). */
  clientForGrant(grant: LocalGrant, tuning?: { timeoutMs?: number; retries?: number }): Promise<BrokerClient>;
};

export function createContext(flags: GlobalFlags, out: Output, env: NodeJS.ProcessEnv = process.env): Context {
  const config = new LocalConfig(env.JIT_CONFIG_DIR || undefined);
  const options: GlobalOptions = { ...flags, profile: flags.profile ?? config.activeProfile() ?? 'default' };
  let secrets: Promise<SecretStore> | undefined;
  // --broker counts as an explicitly given broker URL, exactly like JIT_BROKER_URL (and wins over it).
  const explicitBrokerUrl = options.broker || env.JIT_BROKER_URL || undefined;

  const openSecrets = () => {
    // A CI job on its OIDC identity keeps nothing in a keychain, whatever --keychain says: its
    // session is exchanged anew by each command, so a credential stored for a later one would be
    // a standing secret on the runner that nothing cleans up (docs/ci.md#oidc-no-stored-secret).
    const oidc = authFor(env) === 'oidc';
    const mode = oidc ? 'memory' : options.keychain;
    if (oidc && options.keychain !== 'memory' && !secrets) {
      out.info(`CI OIDC identity: grant credentials stay in this process's memory (--keychain ${options.keychain} does not apply)`);
    }
    secrets ??= openSecretStore(mode, bindingOverride(env)).then((store) => {
      if (store.backend === 'memory' && mode === 'auto') {
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
  const oidcSessions = new Map<string, Promise<OidcSessionView>>();
  const oidcSession = async (brokerUrl: string): Promise<OidcSessionView | undefined> => {
    const source = oidcSource(env);
    if (!source) return undefined;
    let session = oidcSessions.get(brokerUrl);
    if (!session) {
      session = ciIdentityToken(env, source, oidcAudience(env, brokerUrl)).then((token) =>
        new BrokerClient({ brokerUrl }).exchangeOidc(token),
      );
      session.catch(() => oidcSessions.delete(brokerUrl));
      oidcSessions.set(brokerUrl, session);
    }
    return session;
  };

  const credentials = async (profile: string, brokerUrl: string, auth: GrantAuth): Promise<string | undefined> => {
    if (auth === 'oidc') return (await oidcSession(brokerUrl))?.session;
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
    oidcSession,
    async session() {
      const profile = options.profile;
      if (env.JIT_TOKEN && !explicitBrokerUrl) {
        throw new UsageError('JIT_TOKEN is set but JIT_BROKER_URL is not', {
          hint: 'set both, or pass --broker (a token is only sent to the broker it is for)',
        });
      }
      const auth = authFor(env);
      const brokerUrl = explicitBrokerUrl || config.profile(profile)?.brokerUrl;
      if (!brokerUrl) {
        throw new AuthError(`no broker configured for profile "${profile}"`, {
          hint:
            auth === 'oidc'
              ? 'set JIT_BROKER_URL (or pass --broker) to the broker that trusts this CI system'
              : 'run `jit login --broker URL`, or set JIT_BROKER_URL and JIT_TOKEN',
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

/**
 * What a command authenticates with: an explicit JIT_TOKEN wins; then the CI job's own OIDC
 * identity, when the environment offers one; then the profile's token in the keychain.
 */
export function authFor(env: NodeJS.ProcessEnv): GrantAuth {
  return env.JIT_TOKEN ? 'env' : oidcSource(env) ? 'oidc' : 'profile';
}

/** JIT_KEYCHAIN_BINDING pins one keychain binding (keytar or napi-keyring); tests use it to cover both. */
function bindingOverride(env: NodeJS.ProcessEnv): 'keytar' | 'napi-keyring' | undefined {
  const value = env.JIT_KEYCHAIN_BINDING;
  return value === 'keytar' || value === 'napi-keyring' ? value : undefined;
}
