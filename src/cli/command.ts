import type { Command } from 'commander';
import type { Context } from './context.ts';

/** What a handler hands back: data for --json, the human rendering, and the exit status. */
export type CommandResult = { data?: unknown; human?: string; exitCode?: number };

export type CommandInput = { args: string[]; options: Record<string, unknown> };

/**
 * One command: its path under `jit` ("run", "broker init"), how it declares its arguments and
 * flags, and its handler. Handlers return data; main renders it.
 */
export type CommandDefinition = {
  path: string;
  summary: string;
  define?(command: Command): void;
  /** false: skip the reaping of leftover grants that starts every other client command (jit doctor reports them instead). */
  reapFirst?: false;
  handler(input: CommandInput, ctx: Context): Promise<CommandResult>;
};
