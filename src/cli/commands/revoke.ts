import { releaseGrant } from '../../client/release.ts';
import { UsageError } from '../../core/errors.ts';
import { GRANT_ID, type RevocationReceipt } from '../../core/grant.ts';
import type { CommandDefinition } from '../command.ts';
import type { Context } from '../context.ts';

export const revoke: CommandDefinition = {
  path: 'revoke',
  summary: 'revoke a grant now (or --all grants this machine holds)',
  define: (command) =>
    command
      .argument('[id]', 'the grant id, e.g. g_0123456789abcdef0123')
      .option('--all', "revoke every grant in this machine's index (asks first on a terminal)")
      .option('-y, --yes', 'revoke --all without asking (required without a terminal, with --json, or when CI is set)'),
  async handler({ args, options }, ctx) {
    const [id] = args;
    if (Boolean(options.all) === Boolean(id)) throw new UsageError('name one grant id or pass --all', { hint: 'see `jit grants` for ids' });
    if (id && !GRANT_ID.test(id))
      throw new UsageError(`"${id}" is not a grant id`, { hint: 'grant ids look like g_0123456789abcdef0123; see `jit grants`' });
    const targets = id ? [id] : ctx.config.grants().map((grant) => grant.id);
    if (!id && !options.yes && !(await confirmRevokeAll(ctx, targets.length))) {
      return { data: { revoked: [] }, human: `Nothing revoked; ${plural(targets.length)} kept.` };
    }
    const secrets = await ctx.secrets();
    const receipts: RevocationReceipt[] = [];
    for (const target of targets) {
      const local = ctx.config.grant(target);
      const client = local ? await ctx.clientForGrant(local) : (await ctx.session()).client;
      receipts.push(await ctx.out.during(`revoking ${target}`, () => releaseGrant(target, { client, config: ctx.config, secrets })));
    }
    const human = receipts.length === 0 ? 'No grants to revoke.' : receipts.map(describeReceipt).join('\n');
    return { data: id ? receipts[0] : { revoked: receipts }, human };
  },
};

/**
 * Whether the person at the terminal agrees to revoke every grant in the index. Without a person
 * to ask (no terminal, --json, CI set) it refuses rather than guessing: a script must say --yes.
 */
async function confirmRevokeAll(ctx: Context, count: number): Promise<boolean> {
  if (!ctx.interactive) {
    throw new UsageError('revoke --all asks for confirmation and there is no terminal to ask on (or CI is set)', {
      hint: 'pass --yes to revoke every grant without asking',
      code: 'confirmation_required',
    });
  }
  if (count === 0) return true;
  const { confirm } = await import('@inquirer/prompts');
  return confirm({ message: `Revoke all ${plural(count)} this machine holds?`, default: false }, { output: process.stderr });
}

function plural(count: number): string {
  return `${count} grant${count === 1 ? '' : 's'}`;
}

function describeReceipt(receipt: RevocationReceipt): string {
  if (receipt.state === 'unknown') return `${receipt.id}: the broker does not know this grant; removed it from this machine's index`;
  if (receipt.alreadyEnded) return `${receipt.id}: already ${receipt.state}`;
  if (receipt.state === 'cancelled') return `${receipt.id}: request cancelled at ${receipt.revokedAt} (it was waiting for approval)`;
  const pending = receipt.deprovision === 'pending' ? '; revoke-pending: the broker retries the cleanup until it is done' : '';
  return `${receipt.id}: revoked at ${receipt.revokedAt}${receipt.actions.length ? ` (${receipt.actions.join('; ')})` : ''}${pending}`;
}
