import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { VERSION } from '../../src/version.js';
import { FrameDecoder, type FrameCursor } from '../../src/wire/frame-decoder.js';
import { FrameEncoder } from '../../src/wire/frame-encoder.js';
import {
  ANY_REQUEST_ERRORS,
  type AnyRequest,
  Clear,
  Delete,
  Gc,
  Get,
  GetSet,
  HandleSet,
  Initialize,
  type Layout,
  List,
  Locks,
  Release,
  REQUESTS,
  Set as SetItem,
  Shutdown,
  Status,
  Verify,
} from '../../src/wire/protocol.js';
import { PROJECT_ROOT } from '../support/child.js';

const bytes = Buffer.from([0, 1, 2, 250, 255]);
const record = { modified: 1700000000.25, value: { encoding: 'binary', bytes } };
// An item that expires: its `expiresAtMs` travels as seconds and comes back exactly.
const expiring = { modified: 1700000000.5, value: { encoding: 'json', bytes }, expiresAtMs: 1700000123457 };
const status = {
  pid: 1, version: '1.2.3', protocolVersion: 2, uptimeMs: 5, socketPath: null, dataDir: '/d', sizeOnDiskBytes: 9,
  sizeBytes: 8, limitBytes: 1024, items: 2, connections: 2, locksHeld: 1, waiters: 0, hits: 3, misses: 4, evictions: 1,
  evictedBytes: 100, expirations: 2, scopes: [{ name: '', sizeBytes: 8, items: 2, hits: 3, misses: 4, evictions: 1, expirations: 2 }],
  scope: { path: ['a'], sizeBytes: 0, items: 0 }, memoryCacheBytes: 5, memoryCacheLimitBytes: 6, rssBytes: 7,
};
const listed = { id: 'x', sizeBytes: 120, modified: 1700000000.25, expires: 1700000123.457, accessed: 1699999980 };

/** A sample of params and of results for each request. */
const SAMPLES: [AnyRequest, unknown[], unknown[]][] = [
  [
    Get,
    [{ scope: ['a', 'b'], id: 'x', wait: true }, { scope: [], id: '', wait: false }],
    [{ handle: 7, item: record }, { handle: 8, item: null }, { handle: 9, item: expiring }, { handle: null, item: null }],
  ],
  [
    GetSet,
    [{ scope: ['a'], id: 'x', wait: true }, { scope: [], id: 'y', wait: false }],
    [{ handle: 9, item: record, stale: null }, { handle: 10, item: null, stale: expiring }, { handle: null, item: null, stale: null }],
  ],
  [HandleSet, [{ handle: 3, value: { encoding: 'json', bytes } }, { handle: 4, value: { encoding: 'json', bytes }, ttlMs: 1500, staleMs: 60_000 }], [undefined]],
  [
    SetItem,
    [{ scope: ['p'], id: 'q', value: { encoding: 'structured', bytes }, modified: 12.5 }, { scope: [], id: 'q', value: { encoding: 'json', bytes }, modified: 1, ttlMs: 0.5 }],
    [undefined],
  ],
  [Delete, [{ scope: ['p'], id: 'q' }], [undefined]],
  [Clear, [{ scope: [] }, { scope: ['p', 'q'] }], [undefined]],
  [
    List,
    [{ scope: [] }, { scope: ['a', 'b'], cursor: 'YS86eA', limit: 10_000 }],
    [{ items: [], scopes: [], cursor: null }, { items: [listed, { ...listed, id: 'y', expires: null, accessed: null }], scopes: ['b', ''], cursor: 'YS86eQ' }],
  ],
  [Status, [{}, { scope: ['a', 'b'] }], [status]],
  [
    Locks,
    [undefined],
    [
      { locks: [] },
      {
        locks: [
          { scope: ['a'], id: 'x', mode: 'exclusive', state: 'held', client: 'build', pid: 42, sinceMs: 1700000000123 },
          { scope: [], id: '', mode: 'shared', state: 'waiting', client: null, pid: null, sinceMs: 1700000000124 },
          { scope: ['a', 'b'], id: null, mode: 'subtree', state: 'waiting', client: 'hoard eviction', pid: null, sinceMs: 1 },
        ],
      },
    ],
  ],
  [Gc, [{ dryRun: true }, { dryRun: false }], [{ dryRun: false, evictedItems: 3, evictedBytes: 3000, expiredItems: 1, expiredBytes: 10, sizeBytes: 900 }]],
  [
    Verify,
    [{ fix: true }, { fix: false }],
    [
      {
        kept: { bytes: 10, items: 1 },
        counted: { bytes: 12, items: 1 },
        driftedScopes: ['', 'a'],
        orphanFiles: 2,
        orphanBytes: 2048,
        strayEntries: 1,
        fixed: true,
      },
    ],
  ],
  [Shutdown, [undefined], [undefined]],
];

function throughBinary<T>(layout: Layout<T>, value: T): T {
  const encoder = new FrameEncoder();
  encoder.begin(0x01, 1);
  layout.writeBinary(encoder, value);
  encoder.end();
  let read: T | undefined;
  new FrameDecoder({ maxFrameBytes: 1 << 20 }).push(Buffer.concat(encoder.take()), (frame: FrameCursor) => {
    read = layout.readBinary(frame);
    frame.done();
  });
  return read as T;
}

function throughJson<T>(layout: Layout<T>, value: T): T {
  const json = layout.toJson(value);
  return layout.fromJson(json === null ? undefined : JSON.parse(JSON.stringify(json)));
}

describe('the protocol declarations', () => {
  test('every request has an op and a method name of its own', () => {
    expect(new Set(REQUESTS.map((method) => method.op)).size).toBe(REQUESTS.length);
    expect(new Set(REQUESTS.map((method) => method.method)).size).toBe(REQUESTS.length);
    expect(REQUESTS.map((method) => method.op)).not.toContain(Release.op);
  });

  test.each(SAMPLES)('%s: params and results come back equal through both layouts', (method, params, results) => {
    for (const value of params) {
      expect(throughBinary(method.params, value)).toEqual(value);
      expect(throughJson(method.params, value)).toEqual(value);
    }
    for (const value of results) {
      expect(throughBinary(method.result, value)).toEqual(value);
      expect(throughJson(method.result, value)).toEqual(value);
    }
  });

  test('a release comes back equal through both layouts', () => {
    expect(throughBinary(Release.params, { handle: 2 ** 40 })).toEqual({ handle: 2 ** 40 });
    expect(throughJson(Release.params, { handle: 5 })).toEqual({ handle: 5 });
  });

  test('set without modified leaves it out of JSON and sends the current time in binary', () => {
    const params = { scope: [], id: 'k', value: { encoding: 'json', bytes } };
    expect(SetItem.params.toJson(params)).not.toHaveProperty('modified', expect.anything());
    const before = Date.now() / 1000;
    const read = throughBinary(SetItem.params, params);
    expect(read.modified).toBeGreaterThanOrEqual(before);
  });

  test('malformed JSON params are refused with the documented codes', () => {
    expect(() => Get.params.fromJson({ scope: 'a', id: 'x' })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    expect(() => Get.params.fromJson({ scope: [''], id: 'x' })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    expect(() => GetSet.params.fromJson({ scope: [], id: 'x', wait: 'yes' })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    expect(() => SetItem.params.fromJson({ scope: [], id: 'x', encoding: 'json', value: 'not base64!' })).toThrow(
      expect.objectContaining({ code: 'CACHE_INVALID_VALUE' }),
    );
    expect(() => SetItem.params.fromJson({ scope: [], id: 'x', encoding: 'has space', value: '' })).toThrow(
      expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }),
    );
    expect(() => HandleSet.params.fromJson({ handle: -1, encoding: 'json', value: '' })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    // Expiry: ttlMs finite and above 0, staleMs finite, at least 0 and only with ttlMs.
    for (const expiry of [{ ttlMs: 0 }, { ttlMs: -1 }, { ttlMs: 'soon' }, { ttlMs: Infinity }, { staleMs: 5 }, { ttlMs: 1, staleMs: -1 }, { ttlMs: 1, staleMs: Number.NaN }]) {
      expect(() => SetItem.params.fromJson({ scope: [], id: 'x', encoding: 'json', value: '', ...expiry }), JSON.stringify(expiry)).toThrow(
        expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }),
      );
      expect(() => HandleSet.params.fromJson({ handle: 1, encoding: 'json', value: '', ...expiry })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    }
    // A page of more than 10,000 entries, or a cursor that is not a string.
    expect(() => List.params.fromJson({ scope: [], limit: 10_001 })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    expect(() => List.params.fromJson({ scope: [], limit: 0 })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    expect(() => List.params.fromJson({ scope: [], cursor: 5 })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    expect(() => Status.params.fromJson({ scope: 'a' })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    expect(() => Gc.params.fromJson({ dryRun: 'yes' })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    // Absent params: status of the whole daemon, gc for real, verify with fix.
    expect(Status.params.fromJson(undefined)).toEqual({});
    expect(Gc.params.fromJson(undefined)).toEqual({ dryRun: false });
    expect(Verify.params.fromJson({})).toEqual({ fix: false });
    expect(() => Initialize.fromJson({ clientName: 'x' })).toThrow(expect.objectContaining({ code: 'CACHE_INVALID_PARAMS' }));
    // clientName and pid are optional, and of another type they are ignored.
    expect(Initialize.fromJson({ protocolVersion: 1, pid: 'no' })).toMatchObject({ protocolVersion: 1, clientName: undefined, pid: undefined });
  });

  test("PROTOCOL.md lists each request's errors as its declaration does", async () => {
    const doc = await readFile(join(PROJECT_ROOT, 'PROTOCOL.md'), 'utf8');
    for (const method of [...REQUESTS, Initialize]) {
      const section = doc.split(`### \`${method.method}\` (request)`)[1]?.split('\n### ')[0];
      expect(section, method.method).toBeDefined();
      // From "Errors:" to the end of its paragraph.
      const errors = /Errors:([\s\S]*?)(\n\n|$)/.exec(section!)?.[1] ?? '';
      const documented = new Set(errors.match(/CACHE_[A-Z_]+/g) ?? []);
      for (const code of ANY_REQUEST_ERRORS) documented.delete(code);
      expect([...documented].sort(), method.method).toEqual([...method.errors].sort());
    }
  });

  test("VERSION is package.json's version", async () => {
    const manifest = JSON.parse(await readFile(join(PROJECT_ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(VERSION).toBe(manifest.version);
  });
});
