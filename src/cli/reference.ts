import { type Argument, Command, type Option } from 'commander';
import type { CommandDefinition } from './command.ts';

/**
 * docs/cli.md's generated parts, from the same command definitions jit parses with (one source of
 * truth): the command list, the global flags, and each command's usage, arguments and flags.
 * Each part sits between `<!-- generated:NAME -->` and `<!-- /generated -->`; everything outside
 * the markers is hand-written and kept as it is. Regenerate: `npm run docs:cli`.
 */

const OPEN = /^<!-- generated:(.+) -->$/;
const CLOSE = '<!-- /generated -->';

/** The command words' block: `jit PATH` padded to one column, then the summary. */
export function commandList(definitions: readonly CommandDefinition[]): string {
  const width = Math.max(...definitions.map((definition) => `jit ${definition.path}`.length)) + 2;
  return ['```', ...definitions.map((definition) => `jit ${definition.path}`.padEnd(width) + definition.summary), '```'].join('\n');
}

/** A command's usage, arguments and own flags (its global flags are in their own table). */
export function commandReference(definition: CommandDefinition): string {
  const command = new Command(definition.path.split(' ').at(-1) ?? definition.path);
  definition.define?.(command);
  const usage = command
    .usage()
    .split('\n')
    .map((line, index) => (index === 0 ? `jit ${definition.path} ${line}` : line.trim()))
    .map((line) => line.replace('[options]', '[flags]'));
  const parts = [['```', ...usage, '```'].join('\n')];
  if (command.registeredArguments.length > 0) {
    parts.push(table(['argument', 'meaning'], command.registeredArguments.map(argumentRow)));
  }
  if (command.options.length > 0) parts.push(table(['flag', 'default', 'meaning'], command.options.map(optionRow)));
  parts.push(`Plus the [global flags](#global-flags).`);
  return parts.join('\n\n');
}

/** The flags every command takes: those of a program's command that declares none of its own. */
export function globalFlags(program: Command): string {
  const leaf = program.commands[0];
  if (!leaf) return '';
  const rows = leaf.options.filter((option) => option.long !== '--help').map(optionRow);
  return table(['flag', 'default', 'meaning'], [...rows, ['`-h, --help`', '', 'help for the command']]);
}

/** Replaces every generated part of `text` with what `parts` says it is now; parts with no place yet go at the end, as sections. */
export function regenerate(text: string, parts: Map<string, { heading: string; body: string }>): string {
  const lines = text.split('\n');
  const out: string[] = [];
  const placed = new Set<string>();
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index] ?? '';
    const name = OPEN.exec(line)?.[1];
    out.push(line);
    if (name === undefined) continue;
    const end = lines.indexOf(CLOSE, index + 1);
    if (end === -1) throw new Error(`docs/cli.md: "${line}" has no ${CLOSE}`);
    const part = parts.get(name);
    // A command that is gone: its generated part goes, and a test would show it.
    if (!part) {
      out.pop();
      index = end;
      continue;
    }
    out.push(part.body, CLOSE);
    placed.add(name);
    index = end;
  }
  const missing = [...parts].filter(([name]) => !placed.has(name));
  const tail = missing.map(([name, part]) => `\n${part.heading}\n\n<!-- generated:${name} -->\n${part.body}\n${CLOSE}\n`).join('');
  return missing.length > 0 ? `${out.join('\n').replace(/\n*$/, '\n')}${tail}` : out.join('\n');
}

function argumentRow(argument: Argument): string[] {
  const name = argument.required ? `<${argument.name()}>` : `[${argument.name()}]`;
  const choices = argument.argChoices ? ` (one of ${argument.argChoices.map(code).join(', ')})` : '';
  return [code(argument.variadic ? name.replace(/([>\]])$/, '...$1') : name), `${argument.description}${choices}`];
}

function optionRow(option: Option): string[] {
  const choices = option.argChoices ? ` (one of ${option.argChoices.map(code).join(', ')})` : '';
  return [code(option.flags), defaultOf(option), `${option.description}${choices}`];
}

function defaultOf(option: Option): string {
  if (option.defaultValueDescription) return option.defaultValueDescription;
  if (option.defaultValue !== undefined && !option.negate) return code(String(option.defaultValue));
  if (option.mandatory) return 'required';
  return option.required || option.optional ? 'none' : 'off';
}

function code(text: string): string {
  return `\`${text}\``;
}

function table(header: string[], rows: string[][]): string {
  const cell = (text: string) => text.replaceAll('|', '\\|');
  return [
    `| ${header.join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((row) => `| ${row.map(cell).join(' | ')} |`),
  ].join('\n');
}
