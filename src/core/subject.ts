import { UsageError } from './errors.ts';

/** A user's name in `user:NAME`: what `jit broker init --admin` and token subjects accept. */
export const USER_NAME = /^[A-Za-z0-9._@-]{1,64}$/;

/**
 * Checks the subject an API token is minted for (docs/principals.md). Only `user:NAME` for now;
 * CI identities (`ci:...`) arrive with OIDC.
 */
export function checkTokenSubject(subject: string): string {
  const [kind, name = ''] = subject.split(/:(.*)/s);
  if (kind === 'user' && USER_NAME.test(name)) return subject;
  throw new UsageError(`invalid subject "${subject}"`, {
    code: 'invalid_subject',
    hint: 'a token subject is user:NAME, NAME being 1-64 letters, digits, ".", "_", "@" or "-"',
  });
}
