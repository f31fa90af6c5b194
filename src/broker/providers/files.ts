import { lstat, readdir, realpath } from 'node:fs/promises';
import path from 'node:path';
import { DeniedError, NotFoundError, UsageError } from '../../core/errors.ts';
import { type Scope, scopeCovers } from '../../core/scope.ts';

/**
 * The files provider: a resource is a directory on the broker; a grant's credential reads under
 * the granted prefixes through `GET /v1/files/<resource>/<path>` (the S3-compatible gateway is
 * issue 4). The job sees JIT_FILES_URL and JIT_FILES_TOKEN.
 */
export const FILES_ACTIONS = ['read'] as const;

export function filesEnv(publicUrl: string, credential: string): Record<string, string> {
  return { JIT_FILES_URL: `${publicUrl}/v1/files`, JIT_FILES_TOKEN: credential };
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
