#!/usr/bin/env node
// The CLI is compiled to dist/ by `npm ci` (the `prepare` script); this stub keeps the bin path stable.
import { main } from '../dist/cli/main.js';

main(process.argv).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err); process.exitCode = 70; },
);
