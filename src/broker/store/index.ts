import { UsageError } from '../../core/errors.ts';
import type { StoreConfig } from './config.ts';
import { SqliteStore } from './sqlite.ts';
import type { BrokerStore } from './store.ts';

/**
 * Opens (and migrates) the store broker.yaml names. pg is loaded only for a postgres store, so
 * the embedded broker never pays for it.
 */
export async function openStore(config: { store: StoreConfig }, env: NodeJS.ProcessEnv = process.env): Promise<BrokerStore> {
  const store = config.store;
  if (store.engine === 'sqlite') return new SqliteStore(store.file);
  const url = store.urlEnv === undefined ? store.url : env[store.urlEnv];
  if (!url) {
    throw new UsageError(`store.urlEnv names ${store.urlEnv}, which is not set`, {
      code: 'store_url_missing',
      hint: `export ${store.urlEnv}=postgres://USER:PASSWORD@HOST:5432/DATABASE before starting the broker`,
    });
  }
  const { PostgresStore } = await import('./postgres.ts');
  return PostgresStore.open(url);
}
