import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { parseDuration } from '../../core/duration.ts';
import { UsageError } from '../../core/errors.ts';
import { keyIdOf, type SigningKey, signingKeyFromPem } from './chain.ts';
import type { SinkConfig } from './sinks.ts';

/**
 * broker.yaml's `audit:` key (docs/audit.md#configuration): the checkpoint signing key, the keys
 * trusted to have signed older checkpoints, how often to checkpoint, alert thresholds, and the
 * export sinks. Webhook secrets come from environment variables, never the file.
 */
export type AuditConfig = {
  signingKeyFile: string | undefined;
  signingKeyEnv: string | undefined;
  trustedKeyFiles: string[];
  checkpointEvery: number;
  checkpointIntervalSeconds: number;
  alerts: { deniedBurst: number; deniedWindowSeconds: number };
  sinks: (
    | { name: string; type: 'file'; path: string; actions: string[] }
    | { name: string; type: 'webhook'; url: string; secretEnv: string | undefined; actions: string[] }
  )[];
};

const seconds = z.string().transform((text, context) => {
  try {
    return parseDuration(text);
  } catch (error) {
    context.addIssue({ code: 'custom', message: (error as Error).message });
    return z.NEVER;
  }
});
const envName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'the name of an environment variable, such as JIT_AUDIT_WEBHOOK_SECRET');
const actions = z.array(z.string().regex(/^[a-z_*-]+(\.[a-z_*-]+)*$/, 'an action (grant.revoked) or a family (data.*)')).default([]);
const sinkName = z.string().regex(/^[a-z][a-z0-9_-]{0,62}$/, 'a sink name is lowercase letters, digits, "-" or "_"');

export const auditSchema = z
  .strictObject({
    signingKeyFile: z.string().min(1).optional(),
    signingKeyEnv: envName.optional(),
    trustedKeys: z.array(z.string().min(1)).default([]),
    checkpointEvery: z.number().int().min(1).default(1000),
    checkpointInterval: seconds.default(10),
    alerts: z
      .strictObject({ deniedBurst: z.number().int().min(1).default(5), deniedWindow: seconds.default(60) })
      .default({ deniedBurst: 5, deniedWindow: 60 }),
    sinks: z
      .array(
        z.discriminatedUnion('type', [
          z.strictObject({ name: sinkName, type: z.literal('file'), path: z.string().min(1), actions }),
          z.strictObject({
            name: sinkName,
            type: z.literal('webhook'),
            url: z.url({ protocol: /^https?$/ }),
            secretEnv: envName.optional(),
            actions,
          }),
        ]),
      )
      .default([])
      .refine((sinks) => new Set(sinks.map((sink) => sink.name)).size === sinks.length, 'sink names are unique'),
  })
  .refine((audit) => audit.signingKeyFile === undefined || audit.signingKeyEnv === undefined, {
    message: 'give the signing key as signingKeyFile or signingKeyEnv, not both',
    path: ['signingKeyEnv'],
  })
  .default({
    trustedKeys: [],
    checkpointEvery: 1000,
    checkpointInterval: 10,
    alerts: { deniedBurst: 5, deniedWindow: 60 },
    sinks: [],
  });

/** Resolves a validated `audit:` against the config file's directory. */
export function resolveAuditConfig(audit: z.output<typeof auditSchema>, dir: string): AuditConfig {
  return {
    signingKeyFile: audit.signingKeyEnv === undefined ? path.resolve(dir, audit.signingKeyFile ?? 'audit-signing-key.pem') : undefined,
    signingKeyEnv: audit.signingKeyEnv,
    trustedKeyFiles: audit.trustedKeys.map((file) => path.resolve(dir, file)),
    checkpointEvery: audit.checkpointEvery,
    checkpointIntervalSeconds: audit.checkpointInterval,
    alerts: { deniedBurst: audit.alerts.deniedBurst, deniedWindowSeconds: audit.alerts.deniedWindow },
    sinks: audit.sinks.map((sink) =>
      sink.type === 'file'
        ? { ...sink, path: path.resolve(dir, sink.path) }
        : { name: sink.name, type: 'webhook', url: sink.url, secretEnv: sink.secretEnv, actions: sink.actions },
    ),
  };
}

export const DEFAULT_AUDIT_CONFIG = (dir: string): AuditConfig => resolveAuditConfig(auditSchema.parse(undefined), dir);

/**
 * The checkpoint signing key: from the variable signingKeyEnv names (replicas share one key), or
 * the file, which the first start creates (Ed25519, PKCS#8 PEM, mode 0600).
 */
export async function loadSigningKey(config: AuditConfig, env: NodeJS.ProcessEnv = process.env): Promise<SigningKey> {
  if (config.signingKeyEnv !== undefined) {
    const pem = env[config.signingKeyEnv];
    if (!pem) {
      throw new UsageError(`audit.signingKeyEnv names ${config.signingKeyEnv}, which is not set`, {
        code: 'invalid_config',
        hint: 'put the Ed25519 private key (PEM) in it; `openssl genpkey -algorithm ed25519` makes one',
      });
    }
    return parseKey(pem, config.signingKeyEnv);
  }
  const file = config.signingKeyFile ?? 'audit-signing-key.pem';
  const pem = await readFile(file, 'utf8').catch(async (error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') throw error;
    const { privateKey } = generateKeyPairSync('ed25519');
    const created = String(privateKey.export({ type: 'pkcs8', format: 'pem' }));
    // wx: two replicas starting on one directory at once keep the first key.
    await writeFile(file, created, { mode: 0o600, flag: 'wx' }).catch(async (writeError: NodeJS.ErrnoException) => {
      if (writeError.code !== 'EEXIST') throw writeError;
    });
    return readFile(file, 'utf8');
  });
  return parseKey(pem, file);
}

function parseKey(pem: string, where: string): SigningKey {
  try {
    return signingKeyFromPem(pem);
  } catch (error) {
    throw new UsageError(`${where} does not hold an Ed25519 private key (${(error as Error).message})`, {
      code: 'invalid_config',
      hint: 'use a PEM Ed25519 private key; `openssl genpkey -algorithm ed25519` makes one',
    });
  }
}

/** The public keys checkpoints may be signed with: the broker's own and audit.trustedKeys. */
export async function trustedKeys(config: AuditConfig, own: SigningKey): Promise<Map<string, KeyObject>> {
  const keys = new Map<string, KeyObject>([[own.keyId, own.publicKey]]);
  for (const file of config.trustedKeyFiles) {
    const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      throw new UsageError(`cannot read audit.trustedKeys file ${file}: ${error.code ?? error.message}`, { code: 'invalid_config' });
    });
    let key: KeyObject;
    try {
      key = createPublicKey(text);
    } catch (error) {
      throw new UsageError(`audit.trustedKeys file ${file} is not a PEM public key (${(error as Error).message})`, {
        code: 'invalid_config',
        hint: 'save the key from GET /v1/audit/key, or `openssl pkey -in audit-signing-key.pem -pubout`',
      });
    }
    if (key.asymmetricKeyType !== 'ed25519') {
      throw new UsageError(`audit.trustedKeys file ${file} holds a ${key.asymmetricKeyType} key, not ed25519`, {
        code: 'invalid_config',
        hint: 'checkpoints are signed with Ed25519 keys only',
      });
    }
    keys.set(keyIdOf(key), key);
  }
  return keys;
}

/** Export sinks with their webhook secrets read from the environment. */
export function resolveSinks(config: AuditConfig, env: NodeJS.ProcessEnv = process.env): SinkConfig[] {
  return config.sinks.map((sink) => {
    if (sink.type === 'file') return sink;
    const secret = sink.secretEnv === undefined ? undefined : env[sink.secretEnv];
    if (sink.secretEnv !== undefined && !secret) {
      throw new UsageError(`audit.sinks ${sink.name}: secretEnv names ${sink.secretEnv}, which is not set`, {
        code: 'invalid_config',
        hint: 'set it to the shared secret the receiver checks the X-Jit-Signature header with',
      });
    }
    return { name: sink.name, type: 'webhook', url: sink.url, secret, actions: sink.actions };
  });
}
