// docs/cli.md's reference parts are generated from the command definitions jit parses with: the
// command list, the global flags, and every command's usage, arguments and flags (src/cli/reference.ts).
// This fails when any of them is stale: a command or flag added, removed or reworded without the
// reference following. Regenerate with `npm run docs:cli` (`--write`); `--print` shows the result.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { COMMANDS } from '../../src/cli/commands/index.ts';
import { buildProgram } from '../../src/cli/main.ts';
import { commandList, commandReference, globalFlags, regenerate } from '../../src/cli/reference.ts';
import { ROOT } from '../helpers/cli.ts';

const FILE = path.join(ROOT, 'docs', 'cli.md');

/** A command that declares nothing of its own: what the program adds to it are the global flags. */
const BARE = { path: 'bare', summary: '', handler: async () => ({}) };

/** docs/cli.md as it should be: its hand-written text, with every generated part as the definitions have it now. */
export function generated(current: string): string {
  const parts = new Map<string, { heading: string; body: string }>([
    ['commands', { heading: '', body: commandList(COMMANDS) }],
    ['global flags', { heading: '## Global flags', body: globalFlags(buildProgram([BARE], async () => {})) }],
    ...COMMANDS.map((definition): [string, { heading: string; body: string }] => [
      `jit ${definition.path}`,
      { heading: `## jit ${definition.path}`, body: commandReference(definition) },
    ]),
  ]);
  return regenerate(current, parts);
}

const current = await readFile(FILE, 'utf8');
if (process.argv.includes('--write')) await writeFile(FILE, generated(current));
else if (process.argv.includes('--print')) process.stdout.write(generated(current));
else {
  test("docs/cli.md: the command list, the global flags and every command's usage and flags are as the definitions have them", () => {
    const expected = generated(current);
    for (const definition of COMMANDS) {
      assert.ok(
        current.includes(`<!-- generated:jit ${definition.path} -->`),
        `docs/cli.md has no reference for jit ${definition.path}: run \`npm run docs:cli\``,
      );
    }
    assert.equal(current, expected, 'docs/cli.md is stale: regenerate it with `npm run docs:cli`, then commit it');
  });
}
