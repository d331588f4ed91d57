/** This package's version; `test/unit/protocol.test.ts` checks it against package.json, so that nothing reads files at load. */
export const VERSION = '0.4.0';
