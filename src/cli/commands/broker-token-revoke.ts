import { UsageError } from '../../core/errors.ts';
import { TOKEN_ID } from '../../core/token.ts';
import type { CommandDefinition } from '../command.ts';
import { dirOption, withTokenAdmin } from '../token-admin.ts';

export const brokerTokenRevoke: CommandDefinition = {
  path: 'broker token revoke',
  summary: 'revoke an API token now: its next call is refused, on every replica',
  define: (command) => dirOption(command.argument('<token-id>', 'the token id, e.g. tok_0123456789abcdef0123')),
  async handler({ args, options }, ctx) {
    const [tokenId = ''] = args;
    if (!TOKEN_ID.test(tokenId)) {
      // Not echoed: what was pasted here by mistake may be the token itself.
      throw new UsageError('the argument is not a token id', {
        hint: 'token ids look like tok_0123456789abcdef0123 (not the token itself); see `jit broker token list`',
      });
    }
    const revoked = await withTokenAdmin(options, ctx, (admin) => admin.revoke(tokenId));
    const human = revoked.alreadyRevoked
      ? `${revoked.tokenId} (${revoked.subject}): already revoked at ${revoked.revokedAt}`
      : `${revoked.tokenId} (${revoked.subject}): revoked at ${revoked.revokedAt}`;
    return { data: revoked, human };
  },
};
