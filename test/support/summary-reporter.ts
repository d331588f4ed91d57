import type { Reporter, TestModule, TestSuite } from 'vitest/node';

/**
 * Ends the run with the plain `N passed, N failed` line that CI reads; a file that failed to load, and a suite that
 * failed outside its tests (an error while collecting it, or one with no test), count as failed.
 */
export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<unknown>): void {
    let passed = 0;
    let failed = unhandledErrors.length;
    let skipped = 0;
    for (const module of testModules) {
      if (module.errors().length > 0) failed++;
      for (const suite of module.children.allSuites()) if (suite.errors().length > 0 || (suite.state() === 'failed' && !hasFailedTest(suite))) failed++;
      for (const test of module.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failed++;
        else skipped++;
      }
    }
    process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
  }
}

/** Whether a test or a suite within the suite failed: a suite that failed without either failed by itself. */
function hasFailedTest(suite: TestSuite): boolean {
  for (const test of suite.children.allTests()) if (test.result().state === 'failed') return true;
  for (const inner of suite.children.allSuites()) if (inner.state() === 'failed') return true;
  return false;
}
