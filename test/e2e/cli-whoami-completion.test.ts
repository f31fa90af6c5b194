import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import type { GrantView } from '../../src/core/grant.ts';
import { JitProcess, jit, ROOT, terminalAvailable, testEnv } from '../helpers/cli.ts';
import { indexFile } from '../helpers/state.ts';
import { setUp } from './support.ts';

const scratch: string[] = [];
after(() => Promise.all(scratch.map((dir) => rm(dir, { recursive: true, force: true }))));

const has = (command: string) => spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;

describe('jit whoami', () => {
  it('shows the broker, profile, subject, roles and token id the broker sees; --json gives them as one object', async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const { broker, env } = places;
    const human = await jit(['whoami'], { env });
    assert.equal(human.code, 0, human.stderr);
    assert.equal(human.stderr, '');
    assert.match(human.stdout, new RegExp(`^broker +${broker.url.replaceAll('.', '\\.')}\n`));
    assert.match(human.stdout, /^profile +default \(token from JIT_TOKEN\)$/m);
    assert.match(human.stdout, /^subject +user:admin$/m);
    assert.match(human.stdout, /^roles +.*\badmin\b/m);
    assert.match(human.stdout, /^token id +tok_[0-9a-f]{20}$/m);

    const json = await jit(['whoami', '--json'], { env });
    assert.equal(json.code, 0, json.stderr);
    const who = JSON.parse(json.stdout) as {
      brokerUrl: string;
      profile: string;
      auth: string;
      subject: string;
      roles: string[];
      tokenId: string;
    };
    assert.equal(who.brokerUrl, broker.url);
    assert.equal(who.profile, 'default');
    assert.equal(who.auth, 'env');
    assert.equal(who.subject, 'user:admin');
    assert.ok(who.roles.includes('admin'), JSON.stringify(who.roles));
    assert.ok(human.stdout.includes(who.tokenId), 'the human and JSON forms name the same token');
  });

  it('exits 3 with the usual auth error when not logged in, and when the broker refuses the token', async (t) => {
    const env = await testEnv();
    t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
    const nowhere = await jit(['whoami'], { env });
    assert.equal(nowhere.code, 3);
    assert.equal(nowhere.stdout, '');
    assert.equal(
      nowhere.stderr,
      'jit: error: no broker configured for profile "default"; run `jit login --broker URL`, or set JIT_BROKER_URL and JIT_TOKEN\n',
    );

    const places = await setUp(t);
    if (!places) return;
    const refused = await jit(['whoami'], { env: { ...places.env, JIT_TOKEN: 'jit_not-a-real-token-0000000000000000000000000' } });
    assert.equal(refused.code, 3, refused.stderr);
    assert.equal(refused.stdout, '');
    assert.match(refused.stderr, /^jit: error: .*; .*jit login/);
  });
});

describe('jit grants', () => {
  it("--remote lists the broker's view with state, time left and why it ended; --json gives {grants}", async (t) => {
    const places = await setUp(t);
    if (!places) return;
    const { env } = places;
    const requested = await jit(['request', '--scope', 'datasets/train', '--ttl', '45m', '--json'], { env });
    assert.equal(requested.code, 0, requested.stderr);
    const live = (JSON.parse(requested.stdout) as { id: string }).id;
    const other = (JSON.parse((await jit(['request', '--scope', 'datasets/train', '--json'], { env })).stdout) as { id: string }).id;
    assert.equal((await jit(['revoke', other], { env })).code, 0);

    const human = await jit(['grants', '--remote'], { env });
    assert.equal(human.code, 0, human.stderr);
    const lines = human.stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^ID +STATE +SCOPES +TIME LEFT +ENDED$/);
    assert.match(human.stdout, new RegExp(`^${live} +active +datasets/train +4[45]m +-$`, 'm'));
    assert.match(human.stdout, new RegExp(`^${other} +revoked +datasets/train +- +revoked by user:admin$`, 'm'));

    const json = await jit(['grants', '--remote', '--json'], { env });
    assert.equal(json.code, 0, json.stderr);
    const { grants } = JSON.parse(json.stdout) as { grants: GrantView[] };
    assert.deepEqual(
      grants.map((grant) => [grant.id, grant.state]).sort(),
      [
        [live, 'active'],
        [other, 'revoked'],
      ].sort(),
    );

    // The local index no longer holds the revoked one; its table has the time left too.
    const local = await jit(['grants'], { env });
    assert.equal(local.code, 0, local.stderr);
    assert.match(local.stdout, /^ID +STATE +SCOPES +EXPIRES +TIME LEFT +PID +COMMAND\n/);
    assert.match(local.stdout, new RegExp(`^${live} +active +datasets/train +\\S+Z +4[45]m +- +\\(jit request\\)$`, 'm'));
    assert.ok(!local.stdout.includes(other));
  });

  it('--remote without a login exits 3', async (t) => {
    const env = await testEnv();
    t.after(() => rm(env.HOME ?? '', { recursive: true, force: true }));
    const result = await jit(['grants', '--remote'], { env });
    assert.equal(result.code, 3);
    assert.match(result.stderr, /^jit: error: no broker configured/);
  });

  it('makes suspended and pending grants stand out in colour on a terminal, and prints them plain in a pipe', async (t) => {
    if (!terminalAvailable()) return t.skip('util-linux script is not installed');
    const places = await setUp(t);
    if (!places) return;
    const { env } = places;
    const request = async () =>
      (JSON.parse((await jit(['request', '--scope', 'datasets/train', '--json'], { env })).stdout) as { id: string }).id;
    const suspended = await request();
    const pending = await request();
    const file = indexFile(env);
    const index = JSON.parse(await readFile(file, 'utf8')) as { grants: Record<string, { state: string; expiresAt: string | null }> };
    const [suspendedEntry, pendingEntry] = [index.grants[suspended], index.grants[pending]];
    assert.ok(suspendedEntry && pendingEntry);
    suspendedEntry.state = 'suspended';
    Object.assign(pendingEntry, { state: 'pending', expiresAt: null });
    await writeFile(file, JSON.stringify(index));
    const colourEnv = { ...env };
    delete colourEnv.NO_COLOR;

    const piped = await jit(['grants'], { env: colourEnv });
    assert.equal(piped.code, 0, piped.stderr);
    assert.match(piped.stdout, new RegExp(`^${suspended} +suspended +datasets/train +\\S+Z +\\d+m +- `, 'm'));
    assert.match(piped.stdout, new RegExp(`^${pending} +pending +datasets/train +- +- +- `, 'm'));
    assert.ok(!piped.stdout.includes('\x1b['), 'no colour codes in a pipe');

    const onTerminal = await new JitProcess(['grants'], { env: colourEnv, terminal: true, input: '' }).done;
    assert.equal(onTerminal.code, 0, onTerminal.stdout);
    // Coloured, and still aligned: the colour codes take no width in the table.
    assert.match(onTerminal.stdout, new RegExp(`${suspended}  \x1b\\[33msuspended\x1b\\[39m  datasets/train`));
    assert.match(onTerminal.stdout, new RegExp(`${pending}  \x1b\\[36mpending\x1b\\[39m    datasets/train`));
  });
});

describe('jit completion', () => {
  it('bash: registers jit and completes command words, nested ones and flags from the registry', async (t) => {
    if (!has('bash')) return t.skip('bash is not installed');
    const env = await testEnv();
    scratch.push(env.HOME ?? '');
    const result = await jit(['completion', 'bash'], { env });
    assert.equal(result.code, 0, result.stderr);
    const script = path.join(env.HOME ?? '', 'jit.bash');
    await writeFile(script, result.stdout);
    const complete = (...words: string[]) => {
      const probe = `source "$1"; shift; COMP_WORDS=(jit "$@"); COMP_CWORD=$#; _jit; printf '%s\\n' "\${COMPREPLY[@]}"`;
      const run = spawnSync('bash', ['-c', probe, 'bash', script, ...words], { encoding: 'utf8' });
      assert.equal(run.status, 0, run.stderr);
      return run.stdout.trim().split('\n').filter(Boolean);
    };
    const registered = spawnSync('bash', ['-c', 'source "$1"; complete -p jit', 'bash', script], { encoding: 'utf8' });
    assert.equal(registered.stdout.trim(), 'complete -o default -F _jit jit');

    const top = complete('');
    for (const word of ['login', 'whoami', 'run', 'grants', 'broker', 'policy', 'completion'])
      assert.ok(top.includes(word), `${word} in ${top}`);
    assert.deepEqual(complete('br'), ['broker']);
    assert.deepEqual(complete('broker', ''), ['init', 'start', 'openapi', 'check-config', 'token']);
    assert.deepEqual(complete('broker', 'token', ''), ['create', 'list', 'revoke']);
    assert.deepEqual(complete('broker', 'token', 'create', '--r'), ['--role']);
    assert.deepEqual(complete('grants', '--re'), ['--remote']);
    const runFlags = complete('run', '--');
    for (const flag of ['--scope', '--ttl', '--json', '--profile', '--help']) assert.ok(runFlags.includes(flag), `${flag} in ${runFlags}`);
    assert.deepEqual(complete('grants', '--w'), ['--watch']);
    // Values the definitions name: an argument's choices and a flag's.
    assert.deepEqual(complete('completion', ''), ['bash', 'zsh', 'fish']);
    assert.deepEqual(complete('run', '--keychain', ''), ['auto', 'require', 'memory']);
    assert.deepEqual(complete('run', '--keychain', 'm'), ['memory']);
  });

  // In each shell that is here (.ci/run installs both), ask it what it completes, as a user's TAB would.
  const shells = {
    // fish answers `complete -C LINE` itself.
    fish: (script: string, words: string[]) =>
      spawnSync(
        'fish',
        ['-c', 'source $argv[1]; complete -C $argv[2] | string replace -r "\\t.*" ""', script, ['jit', ...words].join(' ')],
        {
          encoding: 'utf8',
        },
      ),
    // zsh's needs a terminal: the fixture stubs the two functions the script hands its words to.
    zsh: (script: string, words: string[]) =>
      spawnSync('zsh', [path.join(ROOT, 'test', 'e2e', 'fixtures', 'zsh-complete.zsh'), script, ...words], { encoding: 'utf8' }),
  };
  for (const [shell, ask] of Object.entries(shells)) {
    it(`${shell}: completes command words, nested ones, each command's long flags and the values they allow`, async (t) => {
      if (!has(shell)) {
        if (process.env.CI === 'true') assert.fail(`${shell} is missing; .ci/run installs it`);
        return t.skip(`${shell} is not installed`);
      }
      const env = await testEnv();
      scratch.push(env.HOME ?? '');
      const result = await jit(['completion', shell], { env });
      assert.equal(result.code, 0, result.stderr);
      const script = path.join(env.HOME ?? '', `jit.${shell}`);
      await writeFile(script, result.stdout);
      const complete = (...words: string[]) => {
        const run = ask(script, words);
        assert.equal(run.status, 0, run.stderr);
        assert.equal(run.stderr, '');
        return run.stdout.trim().split('\n').filter(Boolean).sort();
      };
      assert.deepEqual(complete('br'), ['broker']);
      assert.deepEqual(complete('broker', ''), ['check-config', 'init', 'openapi', 'start', 'token']);
      assert.deepEqual(complete('broker', 'token', ''), ['create', 'list', 'revoke']);
      assert.deepEqual(complete('broker', 'token', 'create', '--r'), ['--role']);
      assert.deepEqual(complete('grants', '--w'), ['--watch']);
      assert.deepEqual(complete('completion', ''), ['bash', 'fish', 'zsh']);
      assert.deepEqual(complete('run', '--keychain', ''), ['auto', 'memory', 'require']);
      // A flag earlier on the line is not taken for a command word (fish's `string join` once was).
      assert.deepEqual(complete('run', '--keychain', 'memory', '--sc'), ['--scope']);
    });
  }

  it('zsh and fish: a script naming every command, checked by the shell when it is installed', async () => {
    const env = await testEnv();
    scratch.push(env.HOME ?? '');
    for (const [shell, check] of [
      ['zsh', ['-n']],
      ['fish', ['--no-execute']],
    ] as const) {
      const result = await jit(['completion', shell], { env });
      assert.equal(result.code, 0, result.stderr);
      for (const word of ["'whoami", "'broker token create'", "'broker token'", 'policy explain', 'remote']) {
        assert.ok(result.stdout.includes(word), `${shell} script mentions ${word}`);
      }
      if (has(shell)) {
        const file = path.join(env.HOME ?? '', `jit.${shell}`);
        await writeFile(file, result.stdout);
        const syntax = spawnSync(shell, [...check, file], { encoding: 'utf8' });
        assert.equal(syntax.status, 0, syntax.stderr);
      }
    }
  });

  it('an unknown shell is a usage error, exit 2', async () => {
    const env = await testEnv();
    scratch.push(env.HOME ?? '');
    const result = await jit(['completion', 'tcsh'], { env });
    assert.equal(result.code, 2);
    assert.equal(result.stdout, '');
    assert.match(
      result.stderr,
      /^jit: error: .*'tcsh' is invalid.*bash, zsh, fish.*; usage: jit completion \[options\] <shell>; `jit completion --help` explains each flag\n$/,
    );
  });
});
