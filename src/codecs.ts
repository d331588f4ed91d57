import { deserialize, serialize } from 'node:v8';
import { CacheError } from './errors.js';

/** The names of the built-in codecs; a stored value records the name it was written with. */
export type CodecName = 'json' | 'binary' | 'structured';

/** Turns values into bytes and back. */
export interface Codec<T> {
  readonly name: CodecName;
  /** @throws CacheError `CACHE_INVALID_VALUE` when the value cannot be represented. */
  encode(value: T): Uint8Array;
  /** @throws CacheError `CACHE_CORRUPT` when the bytes are not a value of this codec. */
  decode(bytes: Uint8Array): T;
  /** Whether a decoded value may share memory with the bytes it came from. */
  readonly decodesToView?: boolean;
}

function invalid(codec: CodecName, why: string, cause?: unknown): CacheError {
  return new CacheError('CACHE_INVALID_VALUE', `The ${codec} codec cannot encode this value: ${why}.`, { cause });
}

function corrupt(codec: CodecName, cause: unknown): CacheError {
  return new CacheError('CACHE_CORRUPT', `A stored value is not valid ${codec}.`, { cause });
}

function strictJson(this: unknown, _key: string, value: unknown): unknown {
  switch (typeof value) {
    case 'bigint':
      throw invalid('json', 'a BigInt has no JSON form (use the structured codec)');
    case 'function':
    case 'symbol':
      throw invalid('json', `a ${typeof value} has no JSON form`);
    case 'number':
      if (!Number.isFinite(value)) throw invalid('json', `${value} has no JSON form`);
      return value;
    case 'undefined':
      if (Array.isArray(this)) throw invalid('json', 'undefined in an array would become null');
      return value;
    default:
      return value;
  }
}

/**
 * JSON text as UTF-8: values round-trip as `JSON.parse(JSON.stringify(value))`, and what JSON cannot hold
 * (BigInt, functions, symbols, non-finite numbers, undefined at the top or in an array, cycles) is refused
 * rather than silently changed. Object properties that are `undefined` are dropped, as JSON does.
 */
const json: Codec<unknown> = {
  name: 'json',
  encode(value) {
    let text: string | undefined;
    try {
      text = JSON.stringify(value, strictJson);
    } catch (error) {
      if (error instanceof CacheError) throw error;
      throw invalid('json', error instanceof Error ? error.message : String(error), error);
    }
    if (text === undefined) throw invalid('json', `${typeof value} has no JSON form`);
    return Buffer.from(text, 'utf8');
  },
  decode(bytes) {
    try {
      return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
    } catch (error) {
      throw corrupt('json', error);
    }
  },
};

/** Raw bytes: a `Uint8Array` (a `Buffer` is one) goes in, a plain `Uint8Array` comes out. */
const binary: Codec<Uint8Array> = {
  name: 'binary',
  decodesToView: true,
  encode(value) {
    if (!(value instanceof Uint8Array)) {
      throw invalid('binary', `expected a Uint8Array, got ${value === null ? 'null' : typeof value}`);
    }
    return Uint8Array.prototype.slice.call(value);
  },
  decode(bytes) {
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  },
};

/** Node's `v8` serialisation: Map, Set, Date, BigInt, typed arrays, cycles; not functions or class identity. */
const structured: Codec<unknown> = {
  name: 'structured',
  encode(value) {
    try {
      return serialize(value);
    } catch (error) {
      throw invalid('structured', error instanceof Error ? error.message : String(error), error);
    }
  },
  decode(bytes) {
    try {
      return deserialize(bytes);
    } catch (error) {
      throw corrupt('structured', error);
    }
  },
};

const codecs: Record<CodecName, Codec<unknown>> = { json, binary: binary as Codec<unknown>, structured };

/** The codec with the given name. */
export function codecNamed<T>(name: CodecName): Codec<T> {
  if (!Object.hasOwn(codecs, name)) {
    throw new TypeError(`Unknown codec ${JSON.stringify(name)}: expected 'json', 'binary' or 'structured'.`);
  }
  return codecs[name] as Codec<T>;
}
