import { createHmac } from 'node:crypto';

/**
 * A grant's S3 credentials, all derived from it and none stored: the access key id names the
 * grant, the session token is the grant credential itself (the broker finds the grant by its
 * hash), and the secret key is an HMAC of that credential, so the gateway recomputes it from the
 * token each request carries. Without the grant credential there is no secret to find.
 */
export function accessKeyIdFor(grantId: string): string {
  return `JIT${grantId.replace(/^g_/, '').toUpperCase()}`;
}

export function grantIdFromAccessKeyId(accessKeyId: string): string | undefined {
  const match = /^JIT([0-9A-F]{20})$/.exec(accessKeyId);
  return match ? `g_${match[1]?.toLowerCase()}` : undefined;
}

/** 40 characters, like an AWS secret access key. */
export function deriveS3Secret(credential: string): string {
  return createHmac('sha256', credential).update('jit s3 secret v1').digest('base64').slice(0, 40);
}
