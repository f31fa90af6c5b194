import { parseDuration } from '../../core/duration.ts';
import { UsageError } from '../../core/errors.ts';
import { GRANT_ID } from '../../core/grant.ts';
import type { CommandDefinition } from '../command.ts';

export const renew: CommandDefinition = {
  path: 'renew',
  summary: "extend a live grant's expiry (same credential), up to its policy's max TTL",
  define: (command) =>
    command
      .argument('<id>', 'the grant id')
      .option('--ttl <duration>', 'new lifetime from now, e.g. 1h (default: the TTL it was issued with)'),
  async handler({ args, options }, ctx) {
    const [id = ''] = args;
    if (!GRANT_ID.test(id))
      throw new UsageError(`"${id}" is not a grant id`, { hint: 'grant ids look like g_0123456789abcdef0123; see `jit grants`' });
    const local = ctx.config.grant(id);
    const client = local ? await ctx.clientForGrant(local) : (await ctx.session()).client;
    const ttl = options.ttl === undefined ? undefined : parseDuration(String(options.ttl), '--ttl');
    const grant = await ctx.out.during(`renewing ${id}`, () => client.renewGrant(id, ttl));
    if (local) ctx.config.putGrant({ ...local, expiresAt: grant.expiresAt });
    return { data: grant, human: `${id} now expires ${grant.expiresAt}` };
  },
};
