import type { Codec } from './codecs.js';
import { CacheError } from './errors.js';
import type { ValueAdapter } from './local-backend.js';
import type { EncodedValue } from './store.js';

/**
 * A copy of `bytes` as a plain `Uint8Array`; a small one is cut from Node's shared buffer pool, which costs far
 * less than an `ArrayBuffer` of its own.
 */
function copyOf(bytes: Uint8Array): Uint8Array {
  const copy = Buffer.allocUnsafe(bytes.byteLength);
  copy.set(bytes);
  return new Uint8Array(copy.buffer, copy.byteOffset, copy.byteLength);
}

/**
 * Encodes with `codec` and refuses to decode a value stored with another encoding. With `sharedBytes` (the bytes
 * to decode are the store's own, which later reads return too), a value that would share their memory is decoded
 * from a copy, so that changing it changes nothing stored.
 */
export function codecAdapter<T>(codec: Codec<T>, options: { sharedBytes?: boolean } = {}): ValueAdapter<T, EncodedValue> {
  const copy = (options.sharedBytes ?? false) && (codec.decodesToView ?? false);
  return {
    encode: (value) => ({ encoding: codec.name, bytes: codec.encode(value) }),
    decode: ({ encoding, bytes }) => {
      if (encoding !== codec.name) {
        throw new CacheError(
          'CACHE_ENCODING_MISMATCH',
          `This value was stored with the ${encoding} encoding, but this cache reads ${codec.name}.`,
        );
      }
      return codec.decode(copy ? copyOf(bytes) : bytes);
    },
    bytes: ({ bytes }) => bytes,
    encoding: codec.name,
    fromBytes: (bytes) => ({ encoding: codec.name, bytes }),
  };
}
