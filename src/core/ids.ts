import { createHash, randomBytes } from 'node:crypto';

/** Random identifiers and secrets. Secrets are 256-bit and stored only as their SHA-256 hash. */
export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(10).toString('hex')}`;
}

/**
 * An identifier that sorts by creation time: 12 hex digits of epoch milliseconds, then 8 random
 * ones (`g_` + 20 hex, the same shape as newId). Rows keyed by it are appended at the end of their
 * B-tree indexes instead of splitting pages all over them (grants, and events by grant id):
 * issuing a grant writes less. Ids are not secrets; the random part keeps replicas apart.
 */
export function newTimeOrderedId(prefix: string, now: number): string {
  return `${prefix}_${Math.floor(now).toString(16).padStart(12, '0').slice(-12)}${randomBytes(4).toString('hex')}`;
}

export function newSecret(prefix: string): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`;
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}
