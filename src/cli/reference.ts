import { type Argument, Command, type Option } from 'commander';
import type { CommandDefinition } from './command.ts';

/**
 * docs/cli.md's generated parts, from the same command definitions jit parses with (one source of
 * truth): the command list, the global flags, and each command's usage, arguments and flags; and,
 * from the schemas of src/cli/shapes.ts, the JSON each command prints with --json.
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

/** A JSON Schema (draft 2020-12) as z.toJSONSchema writes it: what the JSON parts are rendered from. */
export type JsonSchema = { [key: string]: unknown };

/** One way a command prints JSON, and the shape of what it prints (`lines`: one document per line). */
export type JsonPart = { invocation: string; also?: string; schema: JsonSchema; lines?: boolean };

const REF = /^#\/\$defs\/(.+)$/;
/** Objects no longer than this, with no comment inside, are written on one line. */
const ONE_LINE = 90;

/**
 * A command's JSON output, each way of calling it with the shape it prints, written as TypeScript
 * types are (`datetime` and `integer` are explained under "JSON shapes", as are the named shapes
 * it refers to).
 */
export function jsonReference(parts: readonly JsonPart[]): string {
  const named = new Set<string>();
  const blocks = parts.map((part) => {
    const what = part.lines ? 'one JSON document per line (NDJSON), each' : 'one JSON document';
    const body = typeRender(part.schema, '', named);
    const comment = typeof part.schema.description === 'string' ? `// ${part.schema.description}\n` : '';
    const also = part.also ? ` (and \`${part.also}\`)` : '';
    return `\`${part.invocation}\`${also} prints ${what}:\n\n\`\`\`ts\n${comment}${body}\n\`\`\``;
  });
  const refs = [...named].map((name) => `[\`${name}\`](#${name.toLowerCase()})`);
  if (refs.length > 0) blocks.push(`${refs.join(', ')}: see [JSON shapes](#json-shapes).`);
  return blocks.join('\n\n');
}

/** The named shapes (those several commands print), each as `type NAME = ...` under a heading of its own. */
export function namedShapes(shapes: readonly JsonSchema[]): string {
  return shapes
    .flatMap((schema) => {
      const name = REF.exec(String(schema.$ref))?.[1];
      const definition = name ? (schema.$defs as Record<string, JsonSchema> | undefined)?.[name] : undefined;
      if (!name || !definition) throw new Error('a named shape needs meta({ id })');
      const comment = typeof definition.description === 'string' ? `// ${definition.description}\n` : '';
      return [`### ${name}`, `\`\`\`ts\n${comment}type ${name} = ${typeRender(definition, '', new Set())};\n\`\`\``];
    })
    .join('\n\n');
}

function typeRender(schema: JsonSchema, indent: string, named: Set<string>): string {
  const ref = typeof schema.$ref === 'string' ? REF.exec(schema.$ref)?.[1] : undefined;
  if (ref) {
    named.add(ref);
    return ref;
  }
  const union = (schema.anyOf ?? schema.oneOf) as JsonSchema[] | undefined;
  if (union) return [...new Set(union.map((member) => typeRender(member, indent, named)))].join(' | ');
  if ('const' in schema) return JSON.stringify(schema.const);
  if (Array.isArray(schema.enum)) return schema.enum.map((value) => JSON.stringify(value)).join(' | ');
  const types = Array.isArray(schema.type) ? (schema.type as string[]) : schema.type === undefined ? [] : [String(schema.type)];
  if (types.length === 0) return 'unknown';
  return types.map((type) => typeOf(type, schema, indent, named)).join(' | ');
}

function typeOf(type: string, schema: JsonSchema, indent: string, named: Set<string>): string {
  switch (type) {
    case 'string':
      return schema.format === 'date-time' ? 'datetime' : 'string';
    case 'array': {
      const item = typeRender((schema.items ?? {}) as JsonSchema, indent, named);
      return /[ |]/.test(item) && !item.startsWith('{') ? `(${item})[]` : `${item}[]`;
    }
    case 'object':
      return objectType(schema, indent, named);
    default:
      return type;
  }
}

function objectType(schema: JsonSchema, indent: string, named: Set<string>): string {
  const inner = `${indent}  `;
  const properties = Object.entries((schema.properties ?? {}) as Record<string, JsonSchema>);
  const required = new Set((schema.required ?? []) as string[]);
  const fields = properties.map(([name, property]) => ({
    text: `${name}${required.has(name) ? '' : '?'}: ${typeRender(property, inner, named)};`,
    comment: typeof property.description === 'string' ? property.description : undefined,
  }));
  const rest = schema.additionalProperties;
  if (rest !== false && rest !== undefined) {
    const value = typeRender(rest as JsonSchema, inner, named);
    fields.push({ text: `[name: string]: ${value};`, comment: undefined });
  }
  if (fields.length === 0) return '{}';
  const oneLine = `{ ${fields.map((field) => field.text.replace(/;$/, '')).join('; ')} }`;
  if (fields.every((field) => !field.comment && !field.text.includes('\n')) && indent.length + oneLine.length <= ONE_LINE) return oneLine;
  // A comment goes after a one-line field, and above a field that spans lines.
  const lines = fields.map((field) => {
    if (!field.comment) return `${inner}${field.text}`;
    return field.text.includes('\n') ? `${inner}// ${field.comment}\n${inner}${field.text}` : `${inner}${field.text} // ${field.comment}`;
  });
  return `{\n${lines.join('\n')}\n${indent}}`;
}
