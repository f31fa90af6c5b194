import { ROLES } from '../../core/caller.ts';
import { checkTokenSubject } from '../../core/subject.ts';
import { checkRoles } from '../../core/token.ts';
import type { CommandDefinition } from '../command.ts';
import { dirOption, withTokenAdmin } from '../token-admin.ts';

const collect = (value: string, previous: string[] = []) => [...previous, value];

export const brokerTokenCreate: CommandDefinition = {
  path: 'broker token create',
  summary: 'mint an API token for a principal with the given roles (shown once)',
  define: (command) =>
    dirOption(
      command
        .usage('--subject user:NAME --role ROLE [--role ROLE ...] [--label TEXT] [--dir DIR]')
        .requiredOption('--subject <subject>', 'who the token is for: user:NAME')
        .requiredOption('--role <role>', `what it may do, repeatable: ${ROLES.join(', ')}`, collect)
        .option('--label <text>', 'what the token is for, shown in `jit broker token list`'),
    ),
  async handler({ options }, ctx) {
    // Checked here too, so a typo fails before anything is opened or sent.
    const subject = checkTokenSubject(String(options.subject));
    const roles = checkRoles(options.role as string[]);
    const label = options.label === undefined ? undefined : String(options.label);
    const created = await withTokenAdmin(options, ctx, (admin) =>
      admin.create({ subject, roles, ...(label === undefined ? {} : { label }) }),
    );
    ctx.out.info('the token is printed once on stdout; it is stored only as a hash');
    const human = [
      `Created token ${created.tokenId} for ${created.subject} (${created.roles.join(', ')})`,
      `  token: ${created.token}`,
      '',
      `The token is shown this once. Hand it to ${created.subject} over a safe channel; they run:`,
      '  jit login --broker URL --token-stdin',
      `Revoke it with: jit broker token revoke ${created.tokenId}`,
    ].join('\n');
    return { data: created, human };
  },
};
