import path from 'node:path';
import type { CommandDefinition } from '../command.ts';

export const brokerInit: CommandDefinition = {
  path: 'broker init',
  summary: "create a broker directory: broker.yaml, data root, store, and the first admin's token",
  define: (command) =>
    command
      .requiredOption('--dir <dir>', 'the directory to create the broker in')
      .option('--admin <name>', 'name of the first admin (subject user:NAME)', 'admin'),
  async handler({ options }, ctx) {
    const dir = path.resolve(String(options.dir));
    const { token, config, subject } = await (await import('../../broker/broker.ts')).initBroker(dir, String(options.admin));
    const human = [
      `Initialised a jit broker in ${dir}`,
      `  config: ${config}`,
      `  admin:  ${subject}`,
      `  token:  ${token}`,
      '',
      'The token is shown this once and stored only as a hash. Keep it safe, then:',
      `  jit broker start --dir ${dir}`,
      '  jit login --broker http://127.0.0.1:8420 --token-stdin',
    ].join('\n');
    ctx.out.info(`the admin token is printed once on stdout`);
    return { data: { token, config, subject }, human };
  },
};
