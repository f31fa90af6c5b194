import path from 'node:path';
import { z } from 'zod';

/**
 * broker.yaml's `store:` key (docs/broker-config.md#store): the embedded SQLite file, or a
 * PostgreSQL shared by several replicas. A PostgreSQL URL with a password is read from the
 * environment variable `urlEnv` names, so no secret sits in the config file.
 */
export type StoreConfig = { engine: 'sqlite'; file: string } | { engine: 'postgres'; url: string | undefined; urlEnv: string | undefined };

const postgresUrl = z
  .string()
  .refine((text) => /^postgres(ql)?:\/\//.test(text), 'a PostgreSQL URL starts with postgres:// or postgresql://')
  .refine((text) => {
    try {
      return new URL(text).password === '';
    } catch {
      return true;
    }
  }, 'a password does not belong in broker.yaml: put the URL in an environment variable and name it with urlEnv');

export const storeSchema = z
  .discriminatedUnion(
    'engine',
    [
      z.strictObject({ engine: z.literal('sqlite'), file: z.string().min(1).default('broker.db') }),
      z.strictObject({
        engine: z.literal('postgres'),
        url: postgresUrl.optional(),
        urlEnv: z
          .string()
          .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'urlEnv is the name of an environment variable, such as JIT_BROKER_DATABASE_URL')
          .optional(),
      }),
    ],
    { error: 'engine is sqlite or postgres' },
  )
  .superRefine((store, context) => {
    if (store.engine === 'postgres' && (store.url === undefined) === (store.urlEnv === undefined)) {
      context.addIssue({ code: 'custom', path: ['urlEnv'], message: 'a postgres store needs exactly one of urlEnv and url' });
    }
  })
  .default({ engine: 'sqlite', file: 'broker.db' });

/** Resolves a validated `store:` against the config file's directory. */
export function resolveStoreConfig(store: z.output<typeof storeSchema>, dir: string): StoreConfig {
  return store.engine === 'sqlite'
    ? { engine: 'sqlite', file: path.resolve(dir, store.file) }
    : { engine: 'postgres', url: store.url, urlEnv: store.urlEnv };
}
