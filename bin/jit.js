#!/usr/bin/env node
// Thin entry: the CLI lives in src/cli/main.ts. A checkout runs the TypeScript sources directly
// (Node >= 23.6 strips types); an installed package, which ships only dist/ (`npm run build`,
// run by prepack), runs the compiled JavaScript, so Node 22.13 works too.
import { existsSync } from 'node:fs';

const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 13)) {
  process.stderr.write(
    `jit: error: Node.js ${process.versions.node} is too old; jit needs >= 22.13. Run it through npm (npx jit, npm run) to use the pinned Node 24, or install Node 24.\n`,
  );
  process.exit(1);
}
// `jit --version` needs nothing of the CLI: answer it before loading any of it.
if (process.argv.length === 3 && process.argv[2] === '--version') {
  const { readFileSync } = await import('node:fs');
  process.stdout.write(`${JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version}\n`);
  process.exit(0);
}
// Node keeps each module's compiled code (and the type-stripped text of the TypeScript sources a
// checkout runs) between runs: without it every command pays again for stripping types (~150 ms,
// most of `jit run`'s start-up) and compiling. The cache is per user (a shared /tmp directory
// would let another user plant code); NODE_COMPILE_CACHE moves it, NODE_DISABLE_COMPILE_CACHE=1
// turns it off. A directory that cannot be created just means no cache.
const { enableCompileCache } = await import('node:module');
enableCompileCache?.(process.env.NODE_COMPILE_CACHE || (await compileCacheDir()));
const source = new URL('../src/cli/main.ts', import.meta.url);
const entry = process.features.typescript && existsSync(source) ? await import(source.href) : await import('../dist/cli/main.js');
const code = await entry.main(process.argv.slice(2));
// Exit once stdout has drained (pipes are asynchronous on macOS), without waiting on idle sockets.
process.stdout.write('', () => process.exit(code));

async function compileCacheDir() {
  const [{ homedir }, { join }] = await Promise.all([import('node:os'), import('node:path')]);
  if (process.platform === 'win32') return join(process.env.LOCALAPPDATA || join(homedir(), 'AppData', 'Local'), 'jit', 'Cache', 'compile');
  if (process.platform === 'darwin') return join(homedir(), 'Library', 'Caches', 'jit', 'compile');
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'jit', 'compile');
}
