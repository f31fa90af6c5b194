import { UsageError } from '../../core/errors.ts';
import type { CommandDefinition } from '../command.ts';
import { grantToReview } from '../review.ts';

export const deny: CommandDefinition = {
  path: 'deny',
  summary: 'deny a pending request, with a reason the requester sees (with no id on a terminal: pick one)',
  define: (command) =>
    command
      .argument('[id]', 'the grant id; left out on a terminal, pick from the requests waiting for you')
      .option('--reason <text>', 'why (required; asked for on a terminal)'),
  async handler({ args, options }, ctx) {
    const { client } = await ctx.session();
    const id = await grantToReview(ctx, client, args[0], 'deny');
    if (id === undefined) return { data: { grants: [] }, human: 'No requests wait for your review.' };
    const reason = options.reason === undefined ? await askReason(ctx.interactive) : String(options.reason).trim();
    if (!reason) throw new UsageError('a denial needs a reason', { hint: 'pass --reason "why", which the requester sees' });
    const grant = await ctx.out.during(`denying ${id}`, () => client.deny(id, reason));
    return { data: grant, human: `${id} denied: ${grant.subject} does not get ${grant.scopes.join(', ')}` };
  },
};

async function askReason(interactive: boolean): Promise<string> {
  if (!interactive) throw new UsageError('a denial needs a reason', { hint: 'pass --reason "why", which the requester sees' });
  const { input } = await import('@inquirer/prompts');
  return (await input({ message: 'Reason (the requester sees it)', required: true }, { output: process.stderr })).trim();
}
