import path from 'node:path';
import type { CommandDefinition } from '../command.ts';

const count = (n: number, noun: string) => `${n} ${noun}${n === 1 ? '' : 's'}`;

export const brokerCheckConfig: CommandDefinition = {
  path: 'broker check-config',
  summary: "validate a broker directory's broker.yaml and resource roots without starting anything",
  define: (command) => command.requiredOption('--dir <dir>', 'the broker directory (made by `jit broker init`)'),
  async handler({ options }) {
    const { checkBrokerDir } = await import('../../broker/check-config.ts');
    const { summary } = await checkBrokerDir(path.resolve(String(options.dir)));
    const human =
      `${summary.file} is valid: ${count(summary.resources, 'resource')}, ${count(summary.rules, 'rule')}, ` +
      `${count(summary.denyRules, 'deny rule')}, ${count(summary.groups, 'group')}`;
    return { data: { valid: true, ...summary }, human };
  },
};
