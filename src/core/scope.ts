import { UsageError } from './errors.ts';

/**
 * The scope grammar (docs/scopes.md), parsed in this one place for the CLI and the broker:
 *
 *   scope    = resource [ "/" path [ "(" column *( "," column ) ")" ] ] [ ":" action ]
 *   resource = lowercase letter, then lowercase letters, digits, "-" or "_" (at most 63)
 *   path     = segment *( "/" segment ); a segment is letters, digits, ".", "-", "_", "=", "@", "+"
 *              and is never "." or ".."
 *   column   = a SQL name (letter or "_", then letters, digits, "_"), for table scopes
 *   action   = what the grant allows on it; `read` when left out
 */
export type Scope = {
  resource: string;
  /** Sub-path inside the resource, without leading or trailing "/"; "" for the whole resource. */
  path: string;
  action: string;
  /** Columns of a table scope (`warehouse/public.customers(id,email):select`); undefined for all. */
  columns?: string[];
};

export const DEFAULT_ACTION = 'read';

const RESOURCE = /^[a-z][a-z0-9_-]{0,62}$/;
const SEGMENT = /^[A-Za-z0-9._=@+-]+$/;
const ACTION = /^[A-Za-z][A-Za-z0-9 _/.{}*-]*$/;
const COLUMN = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/** Splits "path(col,col)" into the path and its column list (undefined when there is none). */
function splitColumns(target: string): { target: string; columns: string[] | undefined } {
  const open = target.indexOf('(');
  if (open === -1 || !target.endsWith(')')) return { target, columns: undefined };
  return { target: target.slice(0, open), columns: target.slice(open + 1, -1).split(',') };
}

function problemWith(text: string): string | undefined {
  if (text.trim() === '') return 'it is empty';
  const colon = text.indexOf(':');
  const { target, columns } = splitColumns(colon === -1 ? text : text.slice(0, colon));
  const action = colon === -1 ? DEFAULT_ACTION : text.slice(colon + 1);
  if (columns !== undefined) {
    if (!target.includes('/')) return 'a column list follows a table, e.g. warehouse/public.customers(id,email)';
    for (const column of columns) {
      if (!COLUMN.test(column)) return column === '' ? 'the column list has an empty name' : `"${column}" is not a column name`;
    }
    if (new Set(columns).size !== columns.length) return 'the column list names a column twice';
  }
  const [resource = '', ...segments] = target.split('/');
  if (!RESOURCE.test(resource)) return `"${resource}" is not a resource name (lowercase letters, digits, "-", "_"; starting with a letter)`;
  for (const segment of segments) {
    if (segment === '') return 'it has an empty path segment (a leading, doubled or trailing "/")';
    if (segment === '.' || segment === '..') return `path segments "." and ".." are not allowed`;
    if (!SEGMENT.test(segment)) return `path segment "${segment}" has a character outside letters, digits and . - _ = @ +`;
  }
  if (!ACTION.test(action)) return action === '' ? 'the action after ":" is empty' : `"${action}" is not an action`;
  return undefined;
}

/** A likely intended form of a rejected scope, when a mechanical fix-up yields a valid one. */
function nearestValid(text: string): string | undefined {
  const colon = text.indexOf(':');
  const target = colon === -1 ? text : text.slice(0, colon);
  const action = colon === -1 ? '' : text.slice(colon + 1).trim();
  const segments = target
    .trim()
    .replaceAll('\\', '/')
    .split('/')
    .filter((segment) => segment !== '' && segment !== '.' && segment !== '..');
  if (segments.length === 0) return undefined;
  segments[0] = (segments[0] ?? '').toLowerCase();
  const candidate = segments.join('/') + (action ? `:${action}` : '');
  return candidate !== text && problemWith(candidate) === undefined ? candidate : undefined;
}

export function parseScope(text: string): Scope {
  const problem = problemWith(text);
  if (problem !== undefined) {
    const nearest = nearestValid(text);
    throw new UsageError(`invalid scope "${text}": ${problem}`, {
      code: 'invalid_scope',
      hint: nearest ? `did you mean "${nearest}"?` : 'a scope looks like datasets/train or checkpoints/run-42:write (see docs/scopes.md)',
    });
  }
  const colon = text.indexOf(':');
  const { target, columns } = splitColumns(colon === -1 ? text : text.slice(0, colon));
  const slash = target.indexOf('/');
  return {
    resource: slash === -1 ? target : target.slice(0, slash),
    path: slash === -1 ? '' : target.slice(slash + 1),
    action: colon === -1 ? DEFAULT_ACTION : text.slice(colon + 1),
    ...(columns ? { columns } : {}),
  };
}

export function formatScope(scope: Scope): string {
  const base = scope.path ? `${scope.resource}/${scope.path}` : scope.resource;
  const target = scope.columns ? `${base}(${scope.columns.join(',')})` : base;
  return scope.action === DEFAULT_ACTION ? target : `${target}:${scope.action}`;
}

/** The resource-relative path of a scope target, e.g. "datasets/train" for a scope on datasets. */
export function scopeTarget(scope: Scope): string {
  return scope.path ? `${scope.resource}/${scope.path}` : scope.resource;
}

/** True when `path` (resource-relative, "" for the root) lies at or under the scope's path. */
export function scopeCovers(scope: Scope, path: string): boolean {
  return scope.path === '' || path === scope.path || path.startsWith(`${scope.path}/`);
}

/**
 * Glob match of a policy pattern against a scope target ("datasets/train/x.jsonl"):
 * `*` matches within one segment, `**` any number of segments (zero included), so
 * `datasets/**` covers the whole `datasets` resource.
 */
export function globMatches(pattern: string, target: string): boolean {
  return matchSegments(pattern.split('/'), target.split('/'));
}

function matchSegments(pattern: string[], target: string[]): boolean {
  if (pattern.length === 0) return target.length === 0;
  const [head, ...rest] = pattern;
  if (head === '**') {
    for (let skip = 0; skip <= target.length; skip++) if (matchSegments(rest, target.slice(skip))) return true;
    return false;
  }
  if (target.length === 0 || !segmentMatches(head ?? '', target[0] ?? '')) return false;
  return matchSegments(rest, target.slice(1));
}

function segmentMatches(pattern: string, segment: string): boolean {
  if (!pattern.includes('*')) return pattern === segment;
  const regex = new RegExp(`^${pattern.split('*').map(escapeRegex).join('[^/]*')}$`);
  return regex.test(segment);
}

function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The closest known name by edit distance, for "did you mean" hints; undefined when none is close. */
export function closestName(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of known) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current[j] = Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution);
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}
