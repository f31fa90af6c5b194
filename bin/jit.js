#!/usr/bin/env node
// Thin entry: the CLI lives in src/cli/main.ts. A built package runs dist/; a checkout runs the
// TypeScript sources directly (Node >= 23.6 strips types; `npm run build` makes dist/ for 22.13+).
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 13)) {
  process.stderr.write(
    `jit: error: Node.js ${process.versions.node} is too old; jit needs >= 22.13. Run it through npm (npx jit, npm run) to use the pinned Node 24, or install Node 24.\n`,
  );
  process.exit(1);
}
const entry = await import('../dist/cli/main.js').catch((error) => {
  if (error?.code !== 'ERR_MODULE_NOT_FOUND' || !String(error.message).includes('dist')) throw error;
  return import('../src/cli/main.ts');
});
process.exit(await entry.main(process.argv.slice(2)));
