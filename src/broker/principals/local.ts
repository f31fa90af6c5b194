import path from 'node:path';
import { CONFIG_FILE } from '../broker.ts';
import { loadBrokerConfig } from '../config.ts';
import { openStore } from '../store/index.ts';
import { PrincipalService } from './service.ts';

/**
 * Token management straight on a broker directory's store, as its operator on the broker host:
 * the way to mint an admin token when none is left. Runs `work` with a PrincipalService on the
 * store DIR/broker.yaml names (SQLite file or PostgreSQL), and closes the store after.
 */
export async function withBrokerDir<T>(dir: string, work: (principals: PrincipalService) => Promise<T>): Promise<T> {
  const config = await loadBrokerConfig(path.join(dir, CONFIG_FILE));
  const store = await openStore(config);
  try {
    return await work(new PrincipalService({ store, clock: { now: () => Date.now() } }));
  } finally {
    await store.close();
  }
}
