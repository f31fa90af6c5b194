// `npm test`: runs every test file with node's test runner. Where no D-Bus session exists but
// dbus-run-session and gnome-keyring are installed, it first re-runs itself inside a fresh
// session with a new, unlocked keyring, so keychain tests use the real OS keychain (see
// ../shared/KEYCHAIN.md and docs/keychain.md). Extra arguments are passed to `node --test`.
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const args = process.argv.slice(2);
const has = (command: string) => spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;

function run(command: string, commandArgs: string[], env: NodeJS.ProcessEnv = process.env): never {
  const result = spawnSync(command, commandArgs, { stdio: 'inherit', env });
  process.exit(result.status ?? 1);
}

if (!process.env.DBUS_SESSION_BUS_ADDRESS && has('dbus-run-session') && has('gnome-keyring-daemon')) {
  const keyring = mkdtempSync(path.join(tmpdir(), 'jit-test-keyring-'));
  const script = `printf testpw | HOME="$KEYRING" XDG_DATA_HOME="$KEYRING" gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1; exec "$0" "$@"`;
  run('dbus-run-session', ['--', 'sh', '-c', script, process.execPath, process.argv[1] ?? 'test/run.ts', ...args], {
    ...process.env,
    KEYRING: keyring,
  });
}

// Test files are the arguments that name .ts files (or globs of them); everything else, such as
// `--test-name-pattern foo`, goes to node --test as it is.
const isFile = (arg: string) => !arg.startsWith('-') && arg.endsWith('.ts');
const files = args.filter(isFile);
const flags = args.filter((arg) => !isFile(arg));
run(process.execPath, [
  '--test',
  '--test-concurrency=2',
  '--test-timeout=120000',
  ...flags,
  ...(files.length > 0 ? files : ['test/**/*.test.ts']),
]);
