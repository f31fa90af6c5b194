import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { startTestBroker } from '../helpers/broker.ts';
import { JitProcess, type JitProcessOptions, killGroup, ROOT, terminalAvailable, testEnv } from '../helpers/cli.ts';
import { realKeychain } from '../helpers/keychain.ts';
import type { Places } from '../helpers/state.ts';

/** A job script under test/e2e/fixtures, as the argv that runs it with this Node. */
export function job(name: string, ...args: string[]): string[] {
  return [process.execPath, path.join(ROOT, 'test', 'e2e', 'fixtures', name), ...args];
}

/**
 * One test's world: its own broker, its own HOME and config dir logged in to that broker through
 * JIT_BROKER_URL and JIT_TOKEN, and the real keychain. Undefined when the test was skipped for
 * want of a keychain (see realKeychain). Everything is removed when the test ends.
 */
export async function setUp(t: TestContext, broker: Parameters<typeof startTestBroker>[0] = {}): Promise<Places | undefined> {
  const keychain = await realKeychain(t);
  if (!keychain) return undefined;
  const testBroker = await startTestBroker(broker);
  t.after(() => testBroker.cleanup());
  const env = await testEnv({ JIT_BROKER_URL: testBroker.url, JIT_TOKEN: testBroker.token });
  t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
  return { broker: testBroker, env, keychain };
}

/**
 * Starts a long-running `jit` in a process group of its own (so a signal for jit alone is never
 * mistaken for a terminal's), whose whole group is killed when the test ends, however it ends.
 */
export function startJit(t: TestContext, args: string[], options: Omit<JitProcessOptions, 'detached'>): JitProcess {
  const jit = new JitProcess(args, { ...options, detached: true });
  t.after(() => killGroup(jit.child.pid));
  return jit;
}

/**
 * Skips a test that needs a pseudo-terminal where util-linux `script` is missing; true when it did.
 * In CI (which installs it) a missing `script` fails the test instead.
 */
export function skipWithoutTerminal(t: TestContext): boolean {
  if (terminalAvailable()) return false;
  if (process.env.CI === 'true') assert.fail('util-linux `script` is missing; .ci/run installs it');
  t.skip('no util-linux `script` here to give jit a pseudo-terminal');
  return true;
}

/** `jit run --scope datasets/train [flags] -- COMMAND...`, the form most tests use. */
export function runArgs(command: string[], flags: string[] = []): string[] {
  return ['run', '--scope', 'datasets/train', ...flags, '--', ...command];
}

/** The lines of jit's stderr, without the final newline's empty one. */
export function lines(text: string): string[] {
  return text.split('\n').filter((line, index, all) => line !== '' || index < all.length - 1);
}
