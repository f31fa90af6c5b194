// docs/cli.md's reference parts are generated from the command definitions jit parses with: the
// command list, the global flags, and every command's usage, arguments and flags; and from the
// schemas of src/cli/shapes.ts, the JSON every command prints (src/cli/reference.ts).
// This fails when any of them is stale: a command, flag or JSON field added, removed or reworded
// without the reference following. Regenerate with `npm run docs:cli` (`--write`); `--print`
// shows the result.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { COMMANDS } from '../../src/cli/commands/index.ts';
import { buildProgram } from '../../src/cli/main.ts';
import { commandList, commandReference, globalFlags, jsonReference, namedShapes, regenerate } from '../../src/cli/reference.ts';
import { errorDocument, JSON_OUTPUTS, NAMED_SHAPES, toJsonSchema } from '../../src/cli/shapes.ts';
import { ROOT } from '../helpers/cli.ts';

const FILE = path.join(ROOT, 'docs', 'cli.md');

/** A command that declares nothing of its own: what the program adds to it are the global flags. */
const BARE = { path: 'bare', summary: '', handler: async () => ({}) };

type Part = [string, { heading: string; body: string }];

/** The JSON parts: the error document, each command's output, and the named shapes they share. */
function jsonParts(): Part[] {
  return [
    [
      'json error',
      {
        heading: '### The error document',
        body: jsonReference([{ invocation: 'jit COMMAND --json', schema: toJsonSchema(errorDocument) }]),
      },
    ],
    ...Object.entries(JSON_OUTPUTS).map(
      ([command, outputs]): Part => [
        `json ${command}`,
        {
          heading: `### jit ${command} --json`,
          body: jsonReference(outputs.map((output) => ({ ...output, schema: toJsonSchema(output.schema) }))),
        },
      ],
    ),
    ['json shapes', { heading: '## JSON shapes', body: namedShapes(NAMED_SHAPES.map(toJsonSchema)) }],
  ];
}

/** docs/cli.md as it should be: its hand-written text, with every generated part as the definitions have it now. */
export function generated(current: string): string {
  const parts = new Map<string, { heading: string; body: string }>([
    ['commands', { heading: '', body: commandList(COMMANDS) }],
    ['global flags', { heading: '## Global flags', body: globalFlags(buildProgram([BARE], async () => {})) }],
    ...COMMANDS.map(
      (definition): Part => [`jit ${definition.path}`, { heading: `## jit ${definition.path}`, body: commandReference(definition) }],
    ),
    ...jsonParts(),
  ]);
  return regenerate(current, parts);
}

const current = await readFile(FILE, 'utf8');
if (process.argv.includes('--write')) await writeFile(FILE, generated(current));
else if (process.argv.includes('--print')) process.stdout.write(generated(current));
else {
  test("docs/cli.md: the command list, the global flags, every command's usage and flags, and its JSON output are as the definitions have them", () => {
    const expected = generated(current);
    for (const definition of COMMANDS) {
      assert.ok(
        current.includes(`<!-- generated:jit ${definition.path} -->`),
        `docs/cli.md has no reference for jit ${definition.path}: run \`npm run docs:cli\``,
      );
    }
    for (const [name] of jsonParts()) {
      assert.ok(
        current.includes(`<!-- generated:${name} -->`),
        `docs/cli.md has no part "${name}": place its marker, then run \`npm run docs:cli\``,
      );
    }
    assert.equal(current, expected, 'docs/cli.md is stale: regenerate it with `npm run docs:cli`, then commit it');
  });

  test('every command with JSON output is one jit has, so a renamed command cannot leave its shapes behind', () => {
    const paths = new Set(COMMANDS.map((definition) => definition.path));
    for (const command of Object.keys(JSON_OUTPUTS))
      assert.ok(paths.has(command), `src/cli/shapes.ts names jit ${command}, which is no command`);
  });
}
