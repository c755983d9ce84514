#!/usr/bin/env node
// The CLI is compiled to dist/ by `npm ci` (the `prepare` script); this stub keeps the bin path stable.
import { main } from '../dist/cli/main.js';

main(process.argv).then(
  (code) => {
    process.exitCode = code;
    // The task is recorded; an instance abandoned at a progress deadline may still hold a socket
    // until its own timeout, and must not keep the command from returning.
    setTimeout(() => process.exit(code), 2000).unref();
  },
  (err) => { console.error(err); process.exitCode = 70; },
);
