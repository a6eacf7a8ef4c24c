#!/usr/bin/env node
// A `solc` command-line stand-in over solc-js (npm solc), enough for crytic-compile/slither:
// `--version` and `--standard-json` (stdin -> stdout). Imports resolve from node_modules and contracts/src.
const path = require('path');
const fs = require('fs');
const root = path.resolve(__dirname, '..', '..');
const solc = require(path.join(root, 'node_modules', 'solc'));
if (process.argv.includes('--version')) {
  process.stdout.write('solc, the solidity compiler commandline interface\nVersion: ' + solc.version() + '\n');
  process.exit(0);
}
function findImports(p) {
  for (const c of [path.join(root, 'node_modules', p), path.join(root, 'contracts', 'src', p), path.join(root, p)]) {
    if (fs.existsSync(c)) return { contents: fs.readFileSync(c, 'utf8') };
  }
  return { error: 'not found: ' + p };
}
process.stdout.write(solc.compile(fs.readFileSync(0, 'utf8'), { import: findImports }));
