// docs/cli.md opens with every command and its one-line summary, exactly as the command registry
// (what `jit --help` prints) has them: this fails when a command is added, removed or reworded
// without the reference following. Regenerate with: node test/unit/cli-docs.test.ts --print
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { COMMANDS } from '../../src/cli/commands/index.ts';
import { ROOT } from '../helpers/cli.ts';

/** The block as docs/cli.md shows it: `jit PATH` padded to one column, then the summary. */
export function commandBlock(): string {
  const width = Math.max(...COMMANDS.map((command) => `jit ${command.path}`.length)) + 2;
  return COMMANDS.map((command) => `jit ${command.path}`.padEnd(width) + command.summary).join('\n');
}

if (process.argv.includes('--print')) process.stdout.write(`${commandBlock()}\n`);
else {
  test('docs/cli.md lists every command with its summary, as the registry has them', async () => {
    const text = await readFile(path.join(ROOT, 'docs', 'cli.md'), 'utf8');
    const block = /^# CLI reference\n\n```\n([\s\S]*?)\n```/.exec(text)?.[1];
    assert.equal(block, commandBlock(), 'docs/cli.md is stale: regenerate its first block with `node test/unit/cli-docs.test.ts --print`');
  });
}
