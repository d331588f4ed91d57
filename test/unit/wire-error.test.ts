import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { isCacheError } from '../../src/errors.js';
import { ERROR_NUMBERS, fromWireError } from '../../src/wire/wire-error.js';
import { PROJECT_ROOT } from '../support/child.js';

/** The codes README's "Error codes" section documents, one heading each. */
async function documentedCodes(): Promise<string[]> {
  const readme = await readFile(join(PROJECT_ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('\n## Error codes'), readme.indexOf('\n## ', readme.indexOf('\n## Error codes') + 1));
  return [...section.matchAll(/^### `(CACHE_[A-Z_]+)`$/gm)].map(([, code]) => code!);
}

describe('the errors a client raises for the daemon\u2019s codes', () => {
  test('every code the wire carries becomes a CacheError with a documented code, or an AbortError for a cancelled request', async () => {
    const documented = await documentedCodes();
    expect(documented.length).toBeGreaterThan(10);
    for (const code of Object.keys(ERROR_NUMBERS)) {
      const error = fromWireError(code, 'the daemon said so');
      if (code === 'CACHE_CANCELLED') {
        expect(error).toMatchObject({ name: 'AbortError' });
        expect(error).toBeInstanceOf(DOMException);
        continue;
      }
      if (!isCacheError(error)) throw new Error(`${code} became ${String(error)}`);
      expect(documented, `${code} became ${error.code}`).toContain(error.code);
    }
  });

  test('codes that only the wire knows are mapped: the daemon could not take the request as its protocol', () => {
    for (const code of ['CACHE_NOT_INITIALIZED', 'CACHE_PARSE_ERROR', 'CACHE_INVALID_REQUEST']) {
      const error = fromWireError(code, 'Unknown op 0x7e.');
      expect(error, code).toMatchObject({ name: 'CacheError', code: 'CACHE_PROTOCOL_MISMATCH' });
      expect(error.message).toContain('Unknown op 0x7e.');
    }
    // The codes of CacheError pass as they are.
    expect(fromWireError('CACHE_STORAGE', 'disk full')).toMatchObject({ code: 'CACHE_STORAGE', message: 'disk full' });
  });

  test('a code this client does not know (a newer daemon\u2019s) is CACHE_INTERNAL and named in the message', () => {
    for (const code of ['CACHE_FROM_THE_FUTURE', 'constructor', 'toString', 'E_SOMETHING']) {
      const error = fromWireError(code, 'whatever');
      expect(error, code).toMatchObject({ name: 'CacheError', code: 'CACHE_INTERNAL' });
      expect(error.message).toContain(code);
    }
  });
});
