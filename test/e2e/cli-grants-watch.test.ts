import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import type { WatchChange } from '../../src/cli/watch.ts';
import type { LocalGrant } from '../../src/config/local.ts';
import { JitProcess, jit } from '../helpers/cli.ts';
import { indexFile } from '../helpers/state.ts';
import { lines, runArgs, setUp, skipWithoutTerminal, startJit } from './support.ts';

/** The stdout lines of an NDJSON stream so far, each parsed (a line that is not JSON fails the test). */
function changesIn(stdout: Buffer): WatchChange[] {
  return lines(stdout.toString()).map((line) => JSON.parse(line) as WatchChange);
}

describe('jit grants --watch', () => {
  it('on a terminal redraws the table in place: a grant appears, turns revoked, and Ctrl-C exits 0 with the cursor back', async (t) => {
    if (skipWithoutTerminal(t)) return;
    const places = await setUp(t);
    if (!places) return;
    const watch = startJit(t, ['grants', '--watch', '--remote', '--interval', '1s'], {
      env: places.env,
      terminal: true,
      terminalColumns: 200,
    });
    await watch.readUntil('stdout', /Every 1s: jit grants --remote \(Ctrl-C to stop\)/);
    await watch.readUntil('stdout', /has no grants of yours/);

    startJit(t, runArgs(['sleep', '60']), { env: places.env });
    const [, id] = await watch.readUntil('stdout', /(g_[0-9a-f]{20}) +active +datasets\/train +\d+m/);
    assert.ok(id);
    const revoked = await jit(['revoke', id], { env: places.env });
    assert.equal(revoked.code, 0, revoked.stderr);
    await watch.readUntil('stdout', new RegExp(`${id} +revoked +datasets/train +- +revoked by user:admin`));
    // At least three redraws on screen before Ctrl-C (one a second): a quick machine can see the
    // grant come and go in two.
    const ESC = '\x1b';
    await watch.readUntil('stdout', new RegExp(`(?:${ESC}\\[\\d+F${ESC}\\[J[\\s\\S]*){3}`));

    watch.child.stdin?.write('\x03');
    const result = await watch.done;
    assert.equal(result.code, 0, result.stdout);
    const screen = result.stdout.replaceAll('\r\n', '\n');
    assert.ok(screen.startsWith('\x1b[?25l'), 'the cursor is hidden while it watches');
    assert.ok(screen.includes('\x1b[?25h'), 'Ctrl-C shows the cursor again');
    assert.doesNotMatch(screen, /jit: (error|unexpected)/);
    // In place: every frame after the first moves back over exactly the lines the one before it
    // took and clears them, so the terminal shows one table, never a scroll of them.
    const frames = screen.slice(`${ESC}[?25l`.length).split(new RegExp(`${ESC}\\[(\\d+)F${ESC}\\[J`));
    assert.ok(frames.length >= 7, `several redraws, saw ${(frames.length - 1) / 2}`);
    for (let index = 1; index < frames.length; index += 2) {
      const before = frames[index - 1] ?? '';
      assert.equal(Number(frames[index]), before.split('\n').length - 1, `redraw ${(index + 1) / 2} moves up over the frame before it`);
    }
    for (let index = 0; index < frames.length; index += 2) {
      assert.match(frames[index] ?? '', /^Every 1s: jit grants --remote/, 'each frame starts with the header');
    }
  });

  it('off a terminal prints one JSON line per change: the grant added, then gone from the index when it is revoked', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const watch = startJit(t, ['grants', '--watch', '--interval', '1s'], { env: places.env });
    startJit(t, runArgs(['sleep', '60']), { env: places.env });
    await watch.readUntil('stdout', /"change":"added"/);
    const [added] = changesIn(watch.stdout);
    assert.ok(added);
    assert.equal(added.change, 'added');
    assert.equal(added.state, 'active');
    assert.match(added.timeLeft, /^\d+m$/);
    assert.match(added.at, /^\d{4}-\d\d-\d\dT/);
    const grant = added.grant as { id: string; scopes: string[]; command: string; wrapperAlive: boolean };
    assert.equal(grant.id, added.id);
    assert.deepEqual(grant.scopes, ['datasets/train']);
    assert.equal(grant.command, 'sleep 60');
    assert.equal(grant.wrapperAlive, true);

    const revoked = await jit(['revoke', added.id], { env: places.env });
    assert.equal(revoked.code, 0, revoked.stderr);
    await watch.readUntil('stdout', /"change":"removed"/);
    watch.kill('SIGINT');
    const result = await watch.done;
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stderr, '');
    assert.deepEqual(
      changesIn(result.stdoutBytes).map(({ change, id }) => [change, id]),
      [
        ['added', added.id],
        ['removed', added.id],
      ],
      'nothing else changed in between (no time-left bucket passed)',
    );
  });

  it('--json --remote: the broker view, where the revoked grant changes state', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const watch = startJit(t, ['grants', '--watch', '--remote', '--json', '--interval', '1s'], { env: places.env });
    startJit(t, runArgs(['sleep', '60']), { env: places.env });
    await watch.readUntil('stdout', /"change":"added"/);
    const [added] = changesIn(watch.stdout);
    assert.ok(added);
    assert.equal(added.state, 'active');
    const revoked = await jit(['revoke', added.id], { env: places.env });
    assert.equal(revoked.code, 0, revoked.stderr);
    await watch.readUntil('stdout', /"change":"changed"/);
    const changed = changesIn(watch.stdout).find((change) => change.change === 'changed');
    assert.ok(changed);
    assert.equal(changed.id, added.id);
    assert.equal(changed.state, 'revoked');
    assert.equal(changed.timeLeft, '-');
    assert.equal((changed.grant as { endReason: string }).endReason, 'revoked by user:admin');
    watch.kill('SIGINT');
    assert.equal((await watch.done).code, 0);
  });

  it('refuses an interval that is not a duration, before watching, exit 2', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const result = await jit(['grants', '--watch', '--interval', '2'], { env: places.env });
    assert.equal(result.code, 2);
    assert.equal(result.stdout, '');
    assert.equal(result.stderr, 'jit: error: invalid --interval "2"; add a unit, e.g. 2m or 2s\n');
  });
});

describe('jit grants', () => {
  it('on a terminal shows a revoke-pending grant in red, aligned, and prints it plain in a pipe', async (t) => {
    if (skipWithoutTerminal(t)) return;
    const places = await setUp(t);
    if (!places) return;
    const requested = await jit(['request', '--scope', 'datasets/train', '--json'], { env: places.env });
    assert.equal(requested.code, 0, requested.stderr);
    const { id } = JSON.parse(requested.stdout) as { id: string };
    // As a jit run leaves it when its broker was down at exit; with the broker still down, the
    // reaper that starts `jit grants` cannot finish it either.
    const file = indexFile(places.env);
    const index = JSON.parse(await readFile(file, 'utf8')) as { grants: Record<string, LocalGrant> };
    index.grants[id] = { ...(index.grants[id] as LocalGrant), state: 'revoke-pending' };
    await writeFile(file, JSON.stringify(index), { mode: 0o600 });
    await places.broker.stop();
    const colourEnv = { ...places.env };
    delete colourEnv.NO_COLOR;

    const piped = await jit(['grants'], { env: colourEnv });
    assert.equal(piped.code, 0, piped.stderr);
    assert.match(piped.stdout, new RegExp(`^${id} +revoke-pending +datasets/train +\\S+Z +\\d+m +- `, 'm'));
    assert.ok(!piped.stdout.includes('\x1b['), 'no colour codes in a pipe');

    const onTerminal = await new JitProcess(['grants'], { env: colourEnv, terminal: true, input: '' }).done;
    assert.equal(onTerminal.code, 0, onTerminal.stdout);
    // Red (31), and the colour codes take no width: two spaces to the next column as in a pipe.
    assert.match(onTerminal.stdout, new RegExp(`${id}  \x1b\\[31mrevoke-pending\x1b\\[39m  datasets/train`));
  });
});
