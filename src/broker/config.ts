import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import { parseDuration } from '../core/duration.ts';
import { UsageError } from '../core/errors.ts';
import { FILES_ACTIONS } from './providers/files.ts';

/** broker.yaml, validated once at start-up (docs/broker-config.md). Durations are kept in seconds. */
export type FilesResource = { kind: 'files'; root: string };
export type Resource = FilesResource;

export type PolicyRule = {
  name: string;
  subjects: string[];
  scopes: string[];
  actions: string[];
  defaultTtlSeconds: number;
  maxTtlSeconds: number;
};

export type BrokerConfig = {
  /** Absolute directory of the config file; relative paths in it resolve from here. */
  dir: string;
  publicUrl: string | undefined;
  heartbeatTimeoutSeconds: number;
  sweepIntervalSeconds: number;
  resources: Record<string, Resource>;
  rules: PolicyRule[];
};

const duration = z
  .string({ error: (issue) => (issue.input === undefined ? 'required' : 'a duration needs a unit: 90s, 30m, 2h, 1d') })
  .transform((text, context) => {
    try {
      return parseDuration(text);
    } catch (error) {
      context.addIssue({ code: 'custom', message: (error as Error).message });
      return z.NEVER;
    }
  });

const PATTERN = /^[a-z][a-z0-9_-]{0,62}(\/[A-Za-z0-9._=@+*-]+)*$/;

const schema = z
  .strictObject({
    version: z.literal(1),
    publicUrl: z
      .url()
      .transform((url) => url.replace(/\/+$/, ''))
      .optional(),
    grants: z
      .strictObject({
        heartbeatTimeout: duration.default(30),
        sweepInterval: duration.default(1),
      })
      .default({ heartbeatTimeout: 30, sweepInterval: 1 }),
    resources: z.record(
      z.string().regex(/^[a-z][a-z0-9_-]{0,62}$/, 'a resource name is lowercase letters, digits, "-" or "_"'),
      z.strictObject({ kind: z.literal('files'), root: z.string().min(1) }),
    ),
    policy: z.strictObject({
      rules: z.array(
        z.strictObject({
          name: z.string().min(1),
          subjects: z.array(z.string().regex(/^(user|group):.+$/, 'a subject is user:NAME or group:NAME')).min(1),
          scopes: z
            .array(
              z
                .string()
                .regex(PATTERN, 'a scope pattern is RESOURCE[/PATH], where path segments may use * and **')
                .refine(
                  (pattern) => !pattern.split('/').some((segment) => segment === '.' || segment === '..'),
                  'path segments "." and ".." are not allowed',
                ),
            )
            .min(1),
          actions: z.array(z.string().min(1)).default(['read']),
          defaultTtl: duration.default(3600),
          maxTtl: duration,
        }),
      ),
    }),
  })
  .superRefine((config, context) => {
    const known = Object.keys(config.resources);
    config.policy.rules.forEach((rule, ruleIndex) => {
      rule.scopes.forEach((pattern, patternIndex) => {
        const resource = pattern.split('/')[0] ?? '';
        if (!known.includes(resource)) {
          context.addIssue({
            code: 'custom',
            path: ['policy', 'rules', ruleIndex, 'scopes', patternIndex],
            message: `unknown resource "${resource}" (declare it under resources, or use one of: ${known.join(', ')})`,
          });
        }
      });
      const unknownAction = rule.actions.find((action) => !(FILES_ACTIONS as readonly string[]).includes(action));
      if (unknownAction !== undefined) {
        context.addIssue({
          code: 'custom',
          path: ['policy', 'rules', ruleIndex, 'actions'],
          message: `action "${unknownAction}" does not apply to files resources (they have: ${FILES_ACTIONS.join(', ')})`,
        });
      }
    });
  });

export async function loadBrokerConfig(file: string): Promise<BrokerConfig> {
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot read broker config ${file}: ${error.code ?? error.message}`, {
      hint: 'create one with `jit broker init --dir DIR`',
      code: 'config_missing',
    });
  });
  return parseBrokerConfig(text, file);
}

export function parseBrokerConfig(text: string, file: string): BrokerConfig {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: false });
  const [syntaxError] = document.errors;
  if (syntaxError) {
    const line = lineCounter.linePos(syntaxError.pos[0]).line;
    throw new UsageError(`${file}:${line}: ${syntaxError.message.split('\n')[0]}`, { code: 'invalid_config', hint: 'fix the YAML syntax' });
  }
  const parsed = schema.safeParse(document.toJS());
  if (!parsed.success) {
    const [issue] = parsed.error.issues;
    const keyPath = issue?.path.map(String) ?? [];
    const node = document.getIn(keyPath, true) as { range?: [number, number, number] } | undefined;
    const parent = document.getIn(keyPath.slice(0, -1), true) as { range?: [number, number, number] } | undefined;
    const offset = node?.range?.[0] ?? parent?.range?.[0];
    const line = offset === undefined ? '?' : lineCounter.linePos(offset).line;
    throw new UsageError(`${file}:${line}: ${keyPath.join('.') || '(top level)'}: ${issue?.message ?? 'invalid'}`, {
      code: 'invalid_config',
      hint: 'see docs/broker-config.md for the format',
    });
  }
  const config = parsed.data;
  const dir = path.dirname(path.resolve(file));
  const rules = config.policy.rules.map((rule) => ({
    name: rule.name,
    subjects: rule.subjects,
    scopes: rule.scopes,
    actions: rule.actions,
    defaultTtlSeconds: Math.min(rule.defaultTtl, rule.maxTtl),
    maxTtlSeconds: rule.maxTtl,
  }));
  return {
    dir,
    publicUrl: config.publicUrl,
    heartbeatTimeoutSeconds: config.grants.heartbeatTimeout,
    sweepIntervalSeconds: config.grants.sweepInterval,
    resources: Object.fromEntries(
      Object.entries(config.resources).map(([name, resource]) => [name, { kind: resource.kind, root: path.resolve(dir, resource.root) }]),
    ),
    rules,
  };
}

/** The documented starting config `jit broker init` writes. */
export function initialConfigYaml(adminSubject: string): string {
  return `# jit broker configuration. Reference: docs/broker-config.md
version: 1

grants:
  # A grant whose holder stops sending heartbeats (its \`jit run\` was killed) lapses after this.
  heartbeatTimeout: 30s
  # How often the broker marks lapsed and expired grants as expired.
  sweepInterval: 1s

# What can be granted. Paths are relative to this file's directory.
resources:
  datasets:
    kind: files
    root: data/datasets

# Who may request what, and for how long. Anything no rule allows is denied.
policy:
  rules:
    - name: admin-datasets
      subjects: [${JSON.stringify(adminSubject)}]
      scopes: ["datasets/**"]
      actions: [read]
      defaultTtl: 1h
      maxTtl: 8h
`;
}
