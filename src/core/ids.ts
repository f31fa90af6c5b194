import { createHash, randomBytes } from 'node:crypto';

/** Random identifiers and secrets. Secrets are 256-bit and stored only as their SHA-256 hash. */
export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(10).toString('hex')}`;
}

export function newSecret(prefix: string): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`;
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}
