import path from 'node:path';
import type { Command } from 'commander';
import type { CreatedToken, TokenRequest, TokenRevocation, TokenView } from '../core/token.ts';
import type { Context } from './context.ts';

/** What `jit broker token ...` does, wherever the tokens live. */
export type TokenAdmin = {
  create(request: TokenRequest): Promise<CreatedToken>;
  list(): Promise<TokenView[]>;
  revoke(tokenId: string): Promise<TokenRevocation>;
};

/** The flag every `jit broker token` command takes to work on the store instead of the API. */
export function dirOption(command: Command): Command {
  return command.option(
    '--dir <dir>',
    "work on this broker directory's store directly, as its operator on the broker host (no token needed); " +
      'without it, the API is called as the logged-in admin',
  );
}

/**
 * Runs `work` against the broker's tokens: with --dir, on the store of that broker directory
 * (how an operator mints an admin token when none is left); otherwise through the API with the
 * session's token, which needs the admin role.
 */
export async function withTokenAdmin<T>(
  options: Record<string, unknown>,
  ctx: Context,
  work: (admin: TokenAdmin) => Promise<T>,
): Promise<T> {
  if (options.dir !== undefined) {
    const { withBrokerDir } = await import('../broker/principals/local.ts');
    const { BROKER_HOST } = await import('../broker/principals/service.ts');
    return withBrokerDir(path.resolve(String(options.dir)), (principals) =>
      work({
        create: (request) => principals.create(BROKER_HOST, request),
        list: () => principals.list(),
        revoke: (tokenId) => principals.revoke(BROKER_HOST, tokenId),
      }),
    );
  }
  const { client } = await ctx.session();
  return work({
    create: (request) => client.createToken(request),
    list: async () => (await client.listTokens()).tokens,
    revoke: (tokenId) => client.revokeToken(tokenId),
  });
}
