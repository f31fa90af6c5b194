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
const source = new URL('../src/cli/main.ts', import.meta.url);
const entry = process.features.typescript && existsSync(source) ? await import(source.href) : await import('../dist/cli/main.js');
const code = await entry.main(process.argv.slice(2));
// Exit once stdout has drained (pipes are asynchronous on macOS), without waiting on idle sockets.
process.stdout.write('', () => process.exit(code));
