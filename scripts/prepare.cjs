// `npm run prepare`: builds dist/ whenever a package is made from this folder (npm pack and publish, an install
// from a git URL, or from a folder). A folder install gets no devDependencies, so without TypeScript it either keeps
// a dist/ already built there or says what to do, instead of failing with "tsc: not found".
'use strict';
const { execFileSync } = require('node:child_process');
const { existsSync } = require('node:fs');

let typescript;
try {
  typescript = require.resolve('typescript');
} catch {
  typescript = undefined;
}
if (!typescript) {
  if (existsSync('dist/client/index.js')) {
    console.error('hoard-cache: TypeScript is not installed here; using the dist/ already built.');
    process.exit(0);
  }
  console.error(
    `hoard-cache: cannot build dist/ in ${process.cwd()}: TypeScript is not installed there. ` +
      'Run `npm ci` in that folder first and install it again, or install the tarball that `npm pack` makes there.',
  );
  process.exit(1);
}
const npm = process.env.npm_execpath;
if (npm) execFileSync(process.execPath, [npm, 'run', 'build'], { stdio: 'inherit' });
else execFileSync('npm', ['run', 'build'], { stdio: 'inherit' });
