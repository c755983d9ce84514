/**
 * Prints one plain closing line, `vitest: N passed, N failed, N skipped`, after vitest's own
 * summary: CI reads that form in any language, and vitest's coloured table is not one it knows.
 */
import type { Reporter, TestModule } from 'vitest/node';

export default class SummaryReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>, errors: ReadonlyArray<unknown>): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const m of modules) {
      for (const t of m.children.allTests()) {
        const state = t.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failed++;
        else skipped++;
      }
      if (m.state() === 'failed' && [...m.children.allTests()].length === 0) failed++;
    }
    if (errors.length > 0) failed += errors.length;
    // After vitest's own summary, which it prints later in the same hook: last line of the run.
    process.once('exit', () => process.stdout.write(`vitest: ${passed} passed, ${failed} failed, ${skipped} skipped\n`));
  }
}
