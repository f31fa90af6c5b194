import { Command, CommanderError, Option } from 'commander';
import { ExitCode, JitError, UsageError } from '../core/errors.ts';
import { canonicalUrl } from '../core/url.ts';
import { VERSION } from '../core/version.ts';
import { reapLeftovers } from '../runner/reap.ts';
import { KEYCHAIN_MODES, type KeychainMode, parseKeychainMode } from '../secrets/store.ts';
import type { CommandDefinition, CommandResult } from './command.ts';
import { COMMANDS } from './commands/index.ts';
import { type Context, createContext, type GlobalFlags } from './context.ts';
import { Output } from './output.ts';

/** Parses argv, runs one command, prints its result or error, and returns the exit status. */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let result: CommandResult = {};
  let ran: { definition: CommandDefinition; ctx: Context } | undefined;
  const program = buildProgram(COMMANDS, async (definition, command) => {
    const ctx = createContext(
      globalOptions(command.opts(), env),
      new Output({
        json: Boolean(command.opts().json),
        verbose: Boolean(command.opts().verbose),
        quiet: Boolean(command.opts().quiet),
        color: command.opts().color !== false,
      }),
      env,
    );
    ran = { definition, ctx };
    if (!definition.path.startsWith('broker') && definition.reapFirst !== false) await reapLeftovers(ctx);
    result = await definition.handler({ args: command.args, options: command.opts() }, ctx);
  });
  const fallbackOut = () =>
    ran?.ctx.out ?? new Output({ json: argv.includes('--json'), verbose: argv.includes('-v') || argv.includes('--verbose') });

  const args = hoistGlobalFlags(argv, program);
  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return ExitCode.ok;
      // A group without its subcommand (`jit config`): commander has printed its help on stderr.
      if (error.code === 'commander.help') return error.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
      const command = commandAt(program, args);
      const message = error.message
        .replace(/^error: /, '')
        .replace(/\s*\n\s*/g, ' ')
        .replace(/\.$/, '');
      fallbackOut().error(new UsageError(message, { code: 'usage', hint: usageHint(command) }));
      return ExitCode.usage;
    }
    // Ctrl-C at a prompt: the user meant to stop, and a shell expects 130 for that.
    if (error instanceof Error && error.name === 'ExitPromptError') return 128 + 2;
    if (error instanceof JitError) {
      fallbackOut().error(error);
      return error.exitCode;
    }
    fallbackOut().unexpected(error);
    return ExitCode.unexpected;
  }
  ran?.ctx.out.result(result.data, result.human);
  return result.exitCode ?? ExitCode.ok;
}

export function buildProgram(
  definitions: readonly CommandDefinition[],
  run: (definition: CommandDefinition, command: Command) => Promise<void>,
): Command {
  const program = new Command('jit')
    .description('Just-in-time, scoped, self-revoking access to sensitive data for AI workloads.')
    .version(VERSION, '--version')
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput(QUIET_ERRORS)
    .showSuggestionAfterError(true);
  const groups = new Map<string, Command>();
  for (const definition of definitions) {
    const words = definition.path.split(' ');
    let parent = program;
    for (const word of words.slice(0, -1)) {
      // A command can also hold others (`jit audit`, `jit audit verify`).
      let group = groups.get(word) ?? parent.commands.find((existing) => existing.name() === word);
      if (!group) {
        group = parent.command(word).description(`${word} commands`).exitOverride().configureOutput(QUIET_ERRORS);
        groups.set(word, group);
      }
      parent = group;
    }
    const name = words.at(-1) ?? definition.path;
    if (parent.commands.some((existing) => existing.name() === name)) throw new Error(`duplicate command: ${definition.path}`);
    const command = parent.command(name).description(definition.summary).exitOverride().configureOutput(QUIET_ERRORS);
    definition.define?.(command);
    addGlobalOptions(command);
    command.action(async () => run(definition, command));
  }
  return program;
}

/** Commander's own error lines are replaced by jit's one-line errors; its help still prints. */
const QUIET_ERRORS = { outputError: () => {} };

function addGlobalOptions(command: Command): void {
  // `jit login --broker URL` declares its own (the same meaning: the broker to use).
  // The defaults' descriptions are for docs/cli.md (src/cli/reference.ts); the values stay unset,
  // so the environment and the profile can fill them in (globalOptions).
  if (!command.options.some((option) => option.long === '--broker')) {
    command.addOption(
      new Option('--broker <url>', 'the broker for this command, like JIT_BROKER_URL (env JIT_BROKER_URL)').default(
        undefined,
        "`$JIT_BROKER_URL`, else the profile's",
      ),
    );
  }
  command
    .option('--json', 'print the result as one JSON document on stdout')
    .option('-v, --verbose', 'say more on stderr')
    .option('-q, --quiet', 'say less on stderr: results, warnings and errors only')
    .addOption(
      new Option('--no-color', 'no colours (also NO_COLOR=1; never with --json or off a terminal)').default(true, 'colour on a terminal'),
    )
    .addOption(
      new Option('--profile <name>', 'the local profile to use (env JIT_PROFILE)').default(
        undefined,
        '`$JIT_PROFILE`, else the one `jit config use` chose, else `default`',
      ),
    )
    .addOption(
      new Option('--keychain <mode>', 'where credentials are kept: auto, require, memory (env JIT_KEYCHAIN)')
        .choices(KEYCHAIN_MODES)
        .default(undefined, '`$JIT_KEYCHAIN`, else `auto`'),
    );
}

function globalOptions(options: Record<string, unknown>, env: NodeJS.ProcessEnv): GlobalFlags {
  const keychain: KeychainMode = parseKeychainMode(String(options.keychain ?? env.JIT_KEYCHAIN ?? 'auto'));
  return {
    json: Boolean(options.json),
    verbose: Boolean(options.verbose),
    // Else the profile `jit config use` chose, else `default` (createContext, which reads the config).
    ...(options.profile !== undefined || env.JIT_PROFILE ? { profile: String(options.profile ?? env.JIT_PROFILE) } : {}),
    keychain,
    ...(typeof options.broker === 'string' ? { broker: brokerFlag(options.broker) } : {}),
  };
}

function brokerFlag(url: string): string {
  if (!/^https?:\/\/[^/]+/.test(url))
    throw new UsageError(`--broker "${url}" is not an http(s) URL`, { hint: 'e.g. --broker http://127.0.0.1:8420' });
  return canonicalUrl(url);
}

/** The global flags, each with whether it takes a value: the same on every command (addGlobalOptions). */
const GLOBAL_FLAGS = new Map<string, boolean>([
  ['--broker', true],
  ['--json', false],
  ['-v', false],
  ['--verbose', false],
  ['-q', false],
  ['--quiet', false],
  ['--no-color', false],
  ['--profile', true],
  ['--keychain', true],
]);

/**
 * Global flags may come before the command word too (`jit --json grants`, `jit --profile work
 * run ...`): they are moved after the command's words, where each command declares them. Anything
 * else before the command word (`--version`, `--help`, an unknown flag) stays where it is.
 */
export function hoistGlobalFlags(argv: readonly string[], program: Command): string[] {
  const hoisted: string[] = [];
  let index = 0;
  while (index < argv.length) {
    const word = argv[index] ?? '';
    const [flag, inlineValue] = word.includes('=') ? [word.slice(0, word.indexOf('=')), word] : [word, undefined];
    const takesValue = GLOBAL_FLAGS.get(flag);
    if (takesValue === undefined) break;
    if (takesValue && inlineValue === undefined) {
      if (index + 1 >= argv.length) break;
      hoisted.push(word, argv[index + 1] ?? '');
      index += 2;
    } else {
      hoisted.push(word);
      index += 1;
    }
  }
  if (hoisted.length === 0) return [...argv];
  const rest = argv.slice(index);
  const depth = commandWords(program, rest).length;
  // No command named: commander reports what is really wrong with the rest (`--bogus`, or help).
  if (depth === 0) return rest;
  return [...rest.slice(0, depth), ...hoisted, ...rest.slice(depth)];
}

/** The leading words of argv that name commands, group by group (`broker token list`). */
function commandWords(program: Command, argv: readonly string[]): string[] {
  const words: string[] = [];
  let current = program;
  for (const word of argv) {
    const next = current.commands.find((command) => command.name() === word);
    if (!next) break;
    words.push(word);
    current = next;
  }
  return words;
}

/** The deepest command argv names; the program itself when it names none. */
function commandAt(program: Command, argv: readonly string[]): Command {
  let current = program;
  for (const word of commandWords(program, argv)) current = current.commands.find((command) => command.name() === word) ?? current;
  return current;
}

/** The command's usage line, for a usage error's hint: `usage: jit renew [options] <id> (jit renew --help ...)`. */
function usageHint(command: Command): string {
  const words: string[] = [];
  for (let at: Command | null = command; at; at = at.parent) words.unshift(at.name());
  const path = words.join(' ');
  // A usage of several forms (jit run's) reads as alternatives on the one line.
  const forms = command
    .usage()
    .split('\n')
    .map((form) => form.trim())
    .map((form) => (form.startsWith(`${path} `) ? form : `${path} ${form}`));
  return `usage: ${forms.join(' | ')}; \`${path} --help\` explains each flag`;
}
