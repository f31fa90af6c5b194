import { ForbiddenError } from './errors.ts';

/**
 * Roles a principal's API token carries (docs/principals.md). `admin` implies every other role;
 * the rest are independent, so a CI identity can be a requester and nothing else.
 *   requester  asks for grants and manages its own (heartbeat, renew, revoke, cancel)
 *   approver   sees pending requests it may review, approves or denies them
 *   auditor    reads every grant and the audit trail, changes nothing
 *   admin      manages tokens, revokes anyone's grant, and all of the above
 */
export const ROLES = ['requester', 'approver', 'auditor', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/**
 * Who made an API call: the subject its token belongs to, the token's roles, and the token's id.
 * A CI job's OIDC session (docs/ci.md#oidc) also carries its token's verified claims, for the
 * policy's claim rules, and when it ends: no grant TTL reaches past it (see docs/ci.md#oidc).
 */
export type Caller = {
  subject: string;
  roles: readonly Role[];
  tokenId: string;
  claims?: Readonly<Record<string, unknown>>;
  sessionExpiresAt?: number;
};

export function hasRole(caller: Caller, role: Role): boolean {
  return caller.roles.includes('admin') || caller.roles.includes(role);
}

/** Refuses (403 forbidden, exit 4) a caller whose token lacks `role`. */
export function requireRole(caller: Caller, role: Role, doing: string): void {
  if (hasRole(caller, role)) return;
  throw new ForbiddenError(`${caller.subject}'s token has no ${role} role, which ${doing} needs`, {
    hint: `ask a broker admin for a token with the ${role} role (\`jit broker token create --role ${role}\`)`,
  });
}
