import type { TestContext } from 'node:test';
import { openSecretStore, type SecretStore } from '../../src/secrets/store.ts';

/**
 * The real OS keychain for a test. Where none is reachable the test skips, except under CI=true,
 * where CI has set one up (.ci/run) and its absence is a failure.
 */
export async function realKeychain(t: TestContext, binding?: 'keytar' | 'napi-keyring'): Promise<SecretStore | undefined> {
  try {
    return await openSecretStore('require', binding);
  } catch (error) {
    if (process.env.CI === 'true') throw error;
    t.skip(`no OS keychain here (${(error as Error).message}); run inside a D-Bus session with gnome-keyring, as .ci/run does`);
    return undefined;
  }
}
