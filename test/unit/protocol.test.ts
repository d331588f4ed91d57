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
  Get,
  GetSet,
  HandleSet,
  Initialize,
  type Layout,
  Release,
  REQUESTS,
  Set as SetItem,
  Shutdown,
  Status,
} from '../../src/wire/protocol.js';
import { PROJECT_ROOT } from '../support/child.js';

const bytes = Buffer.from([0, 1, 2, 250, 255]);
const record = { modified: 1700000000.25, value: { encoding: 'binary', bytes } };
const status = {
  pid: 1, version: '1.2.3', protocolVersion: 1, uptimeMs: 5, socketPath: null, dataDir: '/d', sizeOnDiskBytes: 9,
  connections: 2, locksHeld: 1, waiters: 0, hits: 3, misses: 4, memoryCacheBytes: 5, memoryCacheLimitBytes: 6, rssBytes: 7,
};

/** A sample of params and of results for each request. */
const SAMPLES: [AnyRequest, unknown[], unknown[]][] = [
  [Get, [{ scope: ['a', 'b'], id: 'x' }, { scope: [], id: '' }], [{ handle: 7, item: record }, { handle: 8, item: null }]],
  [GetSet, [{ scope: ['a'], id: 'x', wait: true }, { scope: [], id: 'y', wait: false }], [{ handle: 9, item: record }, { handle: 10, item: null }, { handle: null, item: null }]],
  [HandleSet, [{ handle: 3, value: { encoding: 'json', bytes } }], [undefined]],
  [SetItem, [{ scope: ['p'], id: 'q', value: { encoding: 'structured', bytes }, modified: 12.5 }], [undefined]],
  [Delete, [{ scope: ['p'], id: 'q' }], [undefined]],
  [Clear, [{ scope: [] }, { scope: ['p', 'q'] }], [undefined]],
  [Status, [undefined], [status]],
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
