import { lstat, readdir, realpath } from 'node:fs/promises';
import path from 'node:path';
import { DeniedError, NotFoundError, UsageError } from '../../core/errors.ts';
import { type Scope, scopeCovers } from '../../core/scope.ts';
import { accessKeyIdFor, deriveS3Secret } from './s3/keys.ts';

const S3_PREFIX = '/s3';

/**
 * The files provider: a resource is a directory on the broker, served as an S3 bucket by the
 * gateway (docs/s3.md), and read-only through `GET /v1/files/<resource>/<path>`. `read` lists and
 * gets, `write` puts (multipart included), `delete` deletes; each under the scope's path only.
 */
export const FILES_ACTIONS = ['read', 'write', 'delete'] as const;

/** The region S3 clients are told; the gateway accepts any region in a signature's scope. */
export const S3_REGION = 'us-east-1';

/**
 * What a job gets for a grant: the S3 variables its usual clients read (boto3, the AWS SDKs,
 * s3fs, pandas), with hints naming the granted buckets and prefixes, and JIT_FILES_* for plain
 * HTTP reads. All of it unlocks only this grant, for as long as it lives.
 */
export function filesEnv(publicUrl: string, credential: string, grant: { id: string; scopes: readonly Scope[] }): Record<string, string> {
  const targets = grant.scopes.map((scope) => `s3://${scope.resource}/${scope.path ? `${scope.path}/` : ''}`);
  const [first] = grant.scopes;
  const endpoint = `${publicUrl}${S3_PREFIX}`;
  return {
    AWS_ACCESS_KEY_ID: accessKeyIdFor(grant.id),
    AWS_SECRET_ACCESS_KEY: deriveS3Secret(credential),
    AWS_SESSION_TOKEN: credential,
    AWS_ENDPOINT_URL: endpoint,
    AWS_ENDPOINT_URL_S3: endpoint,
    AWS_REGION: S3_REGION,
    AWS_DEFAULT_REGION: S3_REGION,
    JIT_S3_BUCKET: first?.resource ?? '',
    JIT_S3_PREFIX: first?.path ? `${first.path}/` : '',
    JIT_S3_URIS: [...new Set(targets)].join(' '),
    JIT_FILES_URL: `${publicUrl}/v1/files`,
    JIT_FILES_TOKEN: credential,
  };
}

/**
 * Splits the raw request path after /v1/files/ into decoded segments, refusing anything that could
 * step outside: "..", ".", empty segments, and encoded "/", "\" or NUL inside a segment.
 */
export function splitRequestPath(rawPath: string): string[] {
  const segments = rawPath.split('/');
  if (segments.length > 0 && segments[segments.length - 1] === '') segments.pop();
  return segments.map((raw) => {
    let segment: string;
    try {
      segment = decodeURIComponent(raw);
    } catch {
      throw new UsageError(`malformed path segment "${raw}"`, { code: 'bad_path', hint: 'percent-encode the path correctly' });
    }
    if (segment === '' || segment === '.' || segment === '..' || /[/\\\0]/.test(segment)) {
      throw new DeniedError('path escapes the granted prefix', {
        code: 'path_traversal',
        hint: 'request a plain path under the granted scope',
      });
    }
    return segment;
  });
}

export type FileTarget =
  | { kind: 'file'; absolute: string; size: number }
  | { kind: 'directory'; absolute: string; entries: DirectoryEntry[] };
export type DirectoryEntry = { name: string; type: 'file' | 'directory' | 'other'; size: number };

/**
 * Resolves `relative` (resource-relative, already split) under `root` for a holder of `scopes`,
 * checking the scope both on the requested path and on the real path after symlinks, so neither
 * a link out of the root nor a link into an ungranted sibling opens anything.
 */
export async function resolveGrantedPath(root: string, segments: string[], scopes: readonly Scope[]): Promise<FileTarget> {
  const requested = segments.join('/');
  const allowed = (relative: string) => scopes.some((scope) => scopeCovers(scope, relative));
  if (!allowed(requested)) throw outsideScope(requested);
  const realRoot = await realpath(root);
  let real: string;
  try {
    real = await realpath(path.join(realRoot, ...segments));
  } catch {
    throw new NotFoundError(`no such file: ${requested}`, { hint: 'list the parent directory to see what exists' });
  }
  const relativeReal = path.relative(realRoot, real);
  if (relativeReal.startsWith('..') || path.isAbsolute(relativeReal)) throw outsideScope(requested);
  const realTarget = relativeReal.split(path.sep).join('/');
  if (!allowed(realTarget)) throw outsideScope(requested);
  const stats = await lstat(real);
  if (stats.isFile()) return { kind: 'file', absolute: real, size: stats.size };
  if (!stats.isDirectory()) throw new NotFoundError(`not a file or directory: ${requested}`);
  const names = await readdir(real, { withFileTypes: true });
  const entries = await Promise.all(
    names.map(async (entry) => {
      const entryStats = await lstat(path.join(real, entry.name)).catch(() => undefined);
      const type = entry.isFile() ? 'file' : entry.isDirectory() ? 'directory' : 'other';
      return { name: entry.name, type, size: entryStats?.size ?? 0 } as DirectoryEntry;
    }),
  );
  entries.sort((a, b) => a.name.localeCompare(b.name));
  return { kind: 'directory', absolute: real, entries };
}

function outsideScope(requested: string): DeniedError {
  return new DeniedError(`"${requested || '/'}" is outside this grant's scope`, {
    code: 'outside_scope',
    hint: 'request a grant whose --scope covers this path',
  });
}
