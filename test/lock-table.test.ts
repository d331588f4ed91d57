import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { type Lease, type LockMode, LockTable } from '../src/lock-table.js';

/** Item keys and subtree prefixes as `scope-path.ts` makes them: `a/` covers `a/:x` and `a/b/:y`. */
const TARGETS: { key: string; mode: LockMode[] }[] = [
  { key: ':x', mode: ['shared', 'exclusive'] },
  { key: 'a/:x', mode: ['shared', 'exclusive'] },
  { key: 'a/b/:y', mode: ['shared', 'exclusive'] },
  { key: 'ab/:x', mode: ['shared', 'exclusive'] },
  { key: 'a/', mode: ['subtree'] },
  { key: 'a/b/', mode: ['subtree'] },
  { key: '', mode: ['subtree'] },
];

interface Modelled {
  seq: number;
  key: string;
  mode: LockMode;
  state: 'waiting' | 'held' | 'done';
  lease?: Lease;
  controller: AbortController;
}

function conflicts(a: Modelled, b: Modelled): boolean {
  const covers = (subtree: string, key: string): boolean => key.startsWith(subtree);
  if (a.mode === 'subtree' && b.mode === 'subtree') return covers(a.key, b.key) || covers(b.key, a.key);
  if (a.mode === 'subtree') return covers(a.key, b.key);
  if (b.mode === 'subtree') return covers(b.key, a.key);
  return a.key === b.key && (a.mode === 'exclusive' || b.mode === 'exclusive');
}

const settle = async (): Promise<void> => {
  for (let n = 0; n < 3; n++) await Promise.resolve();
};

const command = fc.oneof(
  fc.record({ op: fc.constant('acquire' as const), target: fc.nat(TARGETS.length * 2 - 1) }),
  fc.record({ op: fc.constant('try' as const), target: fc.nat(TARGETS.length * 2 - 1) }),
  fc.record({ op: fc.constant('release' as const), pick: fc.nat() }),
  fc.record({ op: fc.constant('abort' as const), pick: fc.nat() }),
  fc.record({ op: fc.constant('rejectWaiters' as const) }),
);

describe('LockTable', () => {
  test('under any sequence of requests, releases, aborts and rejections of waiters, grants are safe, FIFO and prompt', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(command, { maxLength: 60 }), async (commands) => {
        const table = new LockTable();
        const requests: Modelled[] = [];
        for (const c of commands) {
          if (c.op === 'acquire') {
            const target = TARGETS[c.target % TARGETS.length]!;
            const mode = target.mode[c.target % target.mode.length]!;
            const request: Modelled = { seq: requests.length, key: target.key, mode, state: 'waiting', controller: new AbortController() };
            requests.push(request);
            Promise.resolve(table.acquire(target.key, mode, { signal: request.controller.signal })).then(
              (lease) => ((request.state = 'held'), (request.lease = lease)),
              () => (request.state = 'done'),
            );
          } else if (c.op === 'try') {
            const target = TARGETS[c.target % TARGETS.length]!;
            const mode = target.mode[c.target % target.mode.length]!;
            const request: Modelled = { seq: requests.length, key: target.key, mode, state: 'done', controller: new AbortController() };
            const free = !requests.some((r) => r.state !== 'done' && conflicts(r, request));
            const lease = table.tryAcquire(target.key, mode);
            expect(lease !== null).toBe(free);
            if (lease) requests.push({ ...request, state: 'held', lease });
          } else if (c.op === 'release') {
            const held = requests.filter((r) => r.state === 'held');
            const victim = held[c.pick % Math.max(held.length, 1)];
            if (victim) (victim.lease!.release(), (victim.state = 'done'));
          } else if (c.op === 'abort') {
            const waiting = requests.filter((r) => r.state === 'waiting');
            waiting[c.pick % Math.max(waiting.length, 1)]?.controller.abort();
          } else {
            table.rejectWaiters(new Error('closing'));
          }
          await settle();

          const held = requests.filter((r) => r.state === 'held');
          const waiting = requests.filter((r) => r.state === 'waiting');
          for (const a of held) for (const b of held) if (a !== b) expect(conflicts(a, b)).toBe(false);
          for (const w of waiting) {
            // FIFO: nothing that arrived later and conflicts was granted ahead of it.
            for (const h of held) if (h.seq > w.seq) expect(conflicts(w, h)).toBe(false);
            // Prompt: it waits for something real.
            const blocked = held.some((h) => conflicts(w, h)) || waiting.some((e) => e.seq < w.seq && conflicts(w, e));
            expect(blocked).toBe(true);
          }
          expect(table.stats()).toEqual({ held: held.length, waiting: waiting.length });
        }
      }),
      { numRuns: 1000 },
    );
  });

  test('tryAcquire takes a free lock and queues nothing when it is taken', () => {
    const table = new LockTable();
    const first = table.tryAcquire(':x', 'exclusive');
    expect(first?.held).toBe(true);
    expect(table.tryAcquire(':x', 'shared')).toBeNull();
    expect(table.tryAcquire('', 'subtree')).toBeNull();
    expect(table.stats()).toEqual({ held: 1, waiting: 0 });
    first!.release();
    expect(table.tryAcquire('', 'subtree')?.held).toBe(true);
  });
});
