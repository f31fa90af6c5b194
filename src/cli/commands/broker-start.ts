import path from 'node:path';
import { UsageError } from '../../core/errors.ts';
import type { CommandDefinition } from '../command.ts';

export const DEFAULT_BROKER_PORT = 8420;

export const brokerStart: CommandDefinition = {
  path: 'broker start',
  summary: 'serve the broker API from a broker directory until SIGINT or SIGTERM',
  define: (command) =>
    command
      .requiredOption('--dir <dir>', 'the broker directory (made by `jit broker init`)')
      .option('--host <host>', 'address to listen on', '127.0.0.1')
      .option('--port <port>', 'port to listen on (0 picks a free one)', String(DEFAULT_BROKER_PORT)),
  async handler({ options }, ctx) {
    const port = Number(options.port);
    if (!Number.isInteger(port) || port < 0 || port > 65_535)
      throw new UsageError(`invalid port "${options.port}"`, { hint: 'use 0-65535' });
    const broker = await (await import('../../broker/broker.ts')).startBroker({
      dir: path.resolve(String(options.dir)),
      host: String(options.host),
      port,
    });
    ctx.out.result({ url: broker.url }, `jit broker listening on ${broker.url}`);
    const signal = await new Promise<NodeJS.Signals>((resolve) => {
      process.once('SIGINT', () => resolve('SIGINT'));
      process.once('SIGTERM', () => resolve('SIGTERM'));
    });
    ctx.out.info(`${signal}: shutting down`);
    await broker.close();
    return {};
  },
};
