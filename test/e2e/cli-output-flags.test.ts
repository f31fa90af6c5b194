// The global output flags: --no-color on a terminal, -q keeping stderr to warnings and errors.
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { test } from 'node:test';
import { JitProcess, jit, terminalAvailable, testEnv } from '../helpers/cli.ts';
import { runArgs, setUp } from './support.ts';

const ESC = String.fromCharCode(27);

test('errors are coloured on a terminal, and plain with --no-color or NO_COLOR', {
  skip: !terminalAvailable() && !process.env.CI,
}, async (t) => {
  const env = await testEnv({ NO_COLOR: undefined });
  t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
  const run = async (args: string[], extra: Record<string, string> = {}) =>
    (await new JitProcess(args, { env: { ...env, ...extra }, terminal: true }).done).stdout.toString();
  assert.ok((await run(['revoke', 'nope'])).includes(`${ESC}[`), 'colour on a terminal');
  const plain = await run(['revoke', 'nope', '--no-color']);
  assert.match(plain, /jit: error: "nope" is not a grant id/);
  assert.ok(!plain.includes(`${ESC}[`), 'no colour with --no-color');
  assert.ok(!(await run(['revoke', 'nope'], { NO_COLOR: '1' })).includes(`${ESC}[`), 'none with NO_COLOR');
});

test('-q keeps stderr to warnings and errors: -v says nothing, notices are dropped', async (t) => {
  const places = await setUp(t);
  if (!places) return;
  const loud = await jit(runArgs(['true'], ['-v']), { env: places.env });
  assert.match(loud.stderr, /jit: grant g_[0-9a-f]{20} active/);
  const quiet = await jit(runArgs(['true'], ['-v', '-q']), { env: places.env });
  assert.equal(quiet.code, 0);
  assert.equal(quiet.stderr, '');
  const refused = await jit(['run', '-q', '--scope', 'nope/x', '--', 'true'], { env: places.env });
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /^jit: error: unknown resource "nope"/, 'errors still say what is wrong');
});
