import { ROLES, type Role } from './caller.ts';
import { UsageError } from './errors.ts';

/** API token shapes shared by the broker and the CLI (docs/principals.md). */

/** A token's public id: `tok_` and 20 hex digits. Lists show it and revoke names it; it unlocks nothing. */
export const TOKEN_ID = /^tok_[0-9a-f]{20}$/;

/** A token as lists show it: never the token, never its hash. */
export type TokenView = {
  tokenId: string;
  subject: string;
  roles: Role[];
  label: string | null;
  createdBy: string | null;
  createdAt: string;
  revokedAt: string | null;
};

/** A token just minted: the only time the token itself is shown. */
export type CreatedToken = TokenView & { token: string };

export type TokenRequest = { subject: string; roles: readonly string[]; label?: string };

export type TokenRevocation = { tokenId: string; subject: string; revokedAt: string; alreadyRevoked: boolean };

/** The roles a request names, checked and de-duplicated in ROLES order; at least one. */
export function checkRoles(roles: readonly string[]): Role[] {
  const unknown = roles.filter((role) => !(ROLES as readonly string[]).includes(role));
  if (unknown.length > 0 || roles.length === 0) {
    throw new UsageError(roles.length === 0 ? 'a token needs at least one role' : `unknown role "${unknown[0]}"`, {
      code: 'invalid_role',
      hint: `roles are ${ROLES.join(', ')} (docs/principals.md)`,
    });
  }
  return ROLES.filter((role) => roles.includes(role));
}
