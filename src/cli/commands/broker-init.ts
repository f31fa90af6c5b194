import path from 'node:path';
import { UsageError } from '../../core/errors.ts';
import type { CommandDefinition } from '../command.ts';
import { DEFAULT_BROKER_PORT } from './broker-start.ts';

const ADMIN_NAME = /^[A-Za-z0-9._@-]{1,64}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

export const brokerInit: CommandDefinition = {
  path: 'broker init',
  summary: "create a broker directory: broker.yaml, data root, store, and the first admin's token",
  define: (command) =>
    command
      .requiredOption('--dir <dir>', 'the directory to create the broker in')
      .option('--admin <name>', 'name of the first admin (subject user:NAME)', 'admin')
      .option(
        '--postgres-url-env <name>',
        'keep the store in PostgreSQL, its URL read from this environment variable (e.g. JIT_BROKER_DATABASE_URL)',
      ),
  async handler({ options }, ctx) {
    const dir = path.resolve(String(options.dir));
    const admin = String(options.admin);
    if (!ADMIN_NAME.test(admin)) {
      throw new UsageError(`invalid --admin "${admin}"`, { hint: 'use 1-64 letters, digits, ".", "_", "@" or "-"' });
    }
    const postgresUrlEnv = options.postgresUrlEnv === undefined ? undefined : String(options.postgresUrlEnv);
    if (postgresUrlEnv !== undefined && !ENV_NAME.test(postgresUrlEnv)) {
      throw new UsageError(`invalid --postgres-url-env "${postgresUrlEnv}"`, {
        hint: 'name an environment variable, e.g. JIT_BROKER_DATABASE_URL',
      });
    }
    const { token, config, subject } = await (await import('../../broker/broker.ts')).initBroker(dir, admin, { postgresUrlEnv });
    const human = [
      `Initialised a jit broker in ${dir}`,
      `  config: ${config}`,
      `  admin:  ${subject}`,
      `  token:  ${token}`,
      '',
      'The token is shown this once and stored only as a hash. Keep it safe, then:',
      `  jit broker start --dir ${dir}`,
      `  jit login --broker http://127.0.0.1:${DEFAULT_BROKER_PORT} --token-stdin`,
    ].join('\n');
    ctx.out.info(`the admin token is printed once on stdout`);
    return { data: { token, config, subject }, human };
  },
};
