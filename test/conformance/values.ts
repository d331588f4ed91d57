import { readFile, stat } from 'node:fs/promises';
import { deserialize } from 'node:v8';
import { expect, test } from 'vitest';
import { describeWhen, testWhen, expectCode, type Suite, valueOf } from './support.js';

interface Cycle {
  name: string;
  self?: Cycle;
}

function cyclic(): Cycle {
  const value: Cycle = { name: 'loop' };
  value.self = value;
  return value;
}

const JSON_VALUES: Record<string, unknown> = {
  string: 'text',
  'empty string': '',
  'non-ASCII string': 'naïve ключ 键 🔑',
  integer: 42,
  fraction: -0.1,
  'large number': 1.7976931348623157e308,
  true: true,
  false: false,
  null: null,
  array: [1, 'two', null, [3]],
  object: { nested: { list: [1, 2], flag: false }, 'odd key': 'ok' },
  'empty object': {},
};

const STRUCTURED_VALUES: Record<string, unknown> = {
  ...JSON_VALUES,
  Map: new Map<unknown, unknown>([['a', 1], [2, { b: true }]]),
  Set: new Set([1, 'two', 3n]),
  Date: new Date(1700000000500),
  BigInt: 12345678901234567890123n,
  'typed array': new Float64Array([1.5, -2, Number.NaN]),
  undefined: undefined,
  NaN: Number.NaN,
  'nested cycle': cyclic(),
};

/** Values of every kind each codec takes, and what each refuses. */
export function values({ open, features }: Suite): void {
  const kind = features.values;

  describeWhen(features.stores)('values', () => {
    test('item.path() is a private file of the encoded value, small or large, valid until release', async () => {
      const { cache } = await open();
      const large = new Uint8Array(100_000).map((_, n) => n % 7);
      // What each kind of cache writes: the codec's bytes; a memory cache's byte arrays as they are.
      const samples: unknown[] =
        kind === 'binary' || kind === 'as-given' ? [new Uint8Array([1, 2, 3]), large] : [{ small: 1 }, { large: 'z'.repeat(100_000) }];
      const decoded = (bytes: Buffer): unknown =>
        kind === 'json' ? JSON.parse(bytes.toString('utf8')) : kind === 'structured' ? deserialize(bytes) : new Uint8Array(bytes);
      for (const [n, value] of samples.entries()) {
        await cache.set(`id${n}`, value);
        for (const mode of ['get', 'getset'] as const) {
          const handle = mode === 'get' ? await cache.get(`id${n}`) : await cache.getset(`id${n}`);
          const path = await handle.item!.path();
          expect(await handle.item!.path()).toBe(path);
          const bytes = await readFile(path);
          const same = value instanceof Uint8Array ? Buffer.from(value).equals(bytes) : JSON.stringify(decoded(bytes)) === JSON.stringify(value);
          expect(same, `${mode} of sample ${n}`).toBe(true);
          // Private, and written by no one: hoard's files are 0600 or 0400.
          expect((await stat(path)).mode & 0o077).toBe(0);
          await handle.release();
          await expectCode(handle.item!.path(), 'CACHE_LOCK_NOT_HELD');
          // A small value's file was written for the handle, and goes with it.
          if (n === 0) await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
        }
      }
    });

    test("item.path()'s file of a handle never released goes when the cache closes", async () => {
      const subject = await open();
      await subject.cache.set('small', kind === 'binary' || kind === 'as-given' ? new Uint8Array([1]) : 'small');
      const got = await subject.cache.get('small');
      const path = await got.item!.path();
      await subject.close();
      await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    });

    testWhen(kind === 'as-given')('values are kept as given, by reference', async () => {
      const { cache } = await open();
      const object = { list: [1], fn: () => 1, big: 1n };
      await cache.set('object', object);
      expect(await valueOf(cache, 'object')).toBe(object);
      await cache.set('undefined', undefined);
      await using got = await cache.get('undefined');
      expect(got.item).not.toBeNull();
      expect(await got.item!.value()).toBeUndefined();
    });

    testWhen(kind === 'json')('JSON values round-trip', async () => {
      const { cache } = await open();
      for (const [name, value] of Object.entries(JSON_VALUES)) {
        await cache.set(name, value);
        expect(await valueOf(cache, name), name).toStrictEqual(value);
      }
      await cache.set('date', new Date(0));
      expect(await valueOf(cache, 'date')).toBe('1970-01-01T00:00:00.000Z');
      await cache.set('dropped property', { kept: 1, gone: undefined });
      expect(await valueOf(cache, 'dropped property')).toStrictEqual({ kept: 1 });
    });

    testWhen(kind === 'binary')('bytes round-trip as plain Uint8Arrays, empty ones too', async () => {
      const { cache } = await open();
      const large = new Uint8Array(1 << 20).map((_, n) => n % 251);
      for (const bytes of [new Uint8Array(0), new Uint8Array([0, 255, 128]), large, new Uint8Array([1]), large.subarray(7)]) {
        await cache.set('bytes', bytes);
        const read = await valueOf(cache, 'bytes');
        expect(read).toBeInstanceOf(Uint8Array);
        expect(Object.getPrototypeOf(read)).toBe(Uint8Array.prototype);
        // Buffer.equals compares in one step; toStrictEqual on a 1 MiB array takes seconds, byte by byte.
        const got = read as Uint8Array;
        expect(Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(bytes)).toBe(true);
      }
      await cache.set('buffer', Buffer.from('from a Buffer'));
      expect(Buffer.from((await valueOf(cache, 'buffer')) as Uint8Array).toString()).toBe('from a Buffer');
      const view = new Uint8Array([9, 8, 7, 6]).subarray(1, 3);
      await cache.set('view', view);
      expect(await valueOf(cache, 'view')).toStrictEqual(new Uint8Array([8, 7]));
    });

    testWhen(kind === 'binary')('the stored bytes are a copy: changing the array later changes nothing', async () => {
      const { cache } = await open();
      // Small values, and large ones that a store may keep apart from the others.
      for (const length of [3, 100_000]) {
        const bytes = new Uint8Array(length).fill(1);
        const write = cache.set('bytes', bytes);
        bytes[0] = 99;
        await write;
        bytes[1] = 99;
        expect(await valueOf(cache, 'bytes')).toStrictEqual(new Uint8Array(length).fill(1));
      }
    });

    testWhen(kind === 'binary')('a value read is the caller\u2019s own: changing it changes nothing stored', async () => {
      const { cache } = await open();
      for (const length of [10, 100_000]) {
        await cache.set('bytes', new Uint8Array(length).fill(1));
        const read = (await valueOf(cache, 'bytes')) as Uint8Array;
        read[0] = 99;
        expect(await valueOf(cache, 'bytes')).toStrictEqual(new Uint8Array(length).fill(1));
      }
    });

    testWhen(kind === 'structured')('structured values round-trip: Map, Set, Date, BigInt, typed arrays, cycles', async () => {
      const { cache } = await open();
      for (const [name, value] of Object.entries(STRUCTURED_VALUES)) {
        await cache.set(name, value);
        expect(await valueOf(cache, name), name).toStrictEqual(value);
      }
      await cache.set('cycle', cyclic());
      const read = (await valueOf(cache, 'cycle')) as Cycle;
      expect(read.self).toBe(read);
    });

    const refused: Record<string, Record<string, () => unknown>> = {
      json: {
        BigInt: () => 1n,
        'nested BigInt': () => ({ n: [2n] }),
        function: () => () => 1,
        'nested function': () => ({ f: () => 1 }),
        symbol: () => Symbol('s'),
        undefined: () => undefined,
        NaN: () => Number.NaN,
        Infinity: () => ({ n: Infinity }),
        'undefined in an array': () => [1, undefined],
        cycle: cyclic,
      },
      binary: {
        string: () => 'text',
        number: () => 1,
        null: () => null,
        array: () => [1, 2],
        ArrayBuffer: () => new ArrayBuffer(2),
      },
      structured: {
        function: () => () => 1,
        'nested function': () => ({ f: () => 1 }),
        symbol: () => Symbol('s'),
      },
    };
    const cases = Object.entries(kind === 'as-given' ? {} : refused[kind]!);
    testWhen(cases.length > 0)(`values the ${kind} codec cannot encode reject with CACHE_INVALID_VALUE and change nothing`, async () => {
      const { cache } = await open();
      const previous = kind === 'binary' ? new Uint8Array([1]) : 'previous';
      await cache.set('id', previous, { modified: 10 });
      for (const [name, make] of cases) {
        await expectCode(cache.set('id', make()), 'CACHE_INVALID_VALUE').catch((error: unknown) => {
          throw new Error(`set(${name}) did not reject as it should`, { cause: error });
        });
        {
          await using gs = await cache.getset('id');
          await expectCode(gs.set(make()), 'CACHE_INVALID_VALUE');
        }
        await using got = await cache.get('id');
        expect(got.item!.modified).toBe(10);
        expect(await got.item!.value()).toStrictEqual(previous);
      }
      expect(await valueOf(cache, 'never-set')).toBeUndefined();
    });
  });
}
