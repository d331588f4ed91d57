import { describe } from 'vitest';
import { basics } from './basics.js';
import { clear } from './clear.js';
import { errors } from './errors.js';
import { expiry } from './expiry.js';
import { files } from './files.js';
import { listing } from './listing.js';
import { locks } from './locks.js';
import { namespaces } from './namespaces.js';
import { describeWhen, type Features, type OpenSubject } from './support.js';
import { values } from './values.js';

export { ManualClock } from './support.js';
export type { Features, OpenSubject, Subject } from './support.js';

/**
 * The behaviour every {@link Cache} implementation shares. `open` makes a fresh, empty cache for one test
 * and registers its cleanup; `features` says what the implementation can do.
 */
export function cacheConformance(label: string, open: OpenSubject, features: Features): void {
  const suite = { open, features };
  describe(`${label} conformance`, () => {
    describe('basics', () => basics(suite));
    describe('locks', () => locks(suite));
    describe('clear', () => clear(suite));
    describe('namespaces', () => namespaces(suite));
    // A cache that stores nothing has no values to check.
    describeWhen(features.stores)('values', () => values(suite));
    describe('errors', () => errors(suite));
    describe('expiry', () => expiry(suite));
    describe('listing', () => listing(suite));
    describe('files', () => files(suite));
  });
}
