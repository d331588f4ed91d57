import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { type CancelWait, type Lease, type LockMode, LockTable, type WaitGate } from '../src/lock-table.js';

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
  /** How the request's wait is aborted: its signal's controller, or the cancel function its gate was given. */
  abort: () => void;
  viaGate?: boolean;
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
        /** Waits admitted by a gate and not yet left. */
        let inGates = 0;
        for (const c of commands) {
          if (c.op === 'acquire') {
            const target = TARGETS[c.target % TARGETS.length]!;
            const mode = target.mode[c.target % target.mode.length]!;
            const request: Modelled = { seq: requests.length, key: target.key, mode, state: 'waiting', abort: () => {}, viaGate: c.target >= TARGETS.length };
            requests.push(request);
            // Half the requests wait with a signal, half through a gate, as the daemon's sessions do.
            let signal: AbortSignal | WaitGate;
            if (!request.viaGate) {
              const controller = new AbortController();
              request.abort = () => controller.abort();
              signal = controller.signal;
            } else {
              signal = {
                enter: (cancel: CancelWait) => {
                  inGates++;
                  request.abort = () => cancel(new Error('cancelled'));
                  return undefined;
                },
                leave: () => void inGates--,
              };
            }
            Promise.resolve(table.acquire(target.key, mode, { signal, owner: { name: `r${request.seq}`, pid: request.seq } })).then(
              (lease) => ((request.state = 'held'), (request.lease = lease)),
              () => (request.state = 'done'),
            );
          } else if (c.op === 'try') {
            const target = TARGETS[c.target % TARGETS.length]!;
            const mode = target.mode[c.target % target.mode.length]!;
            const request: Modelled = { seq: requests.length, key: target.key, mode, state: 'done', abort: () => {} };
            const free = !requests.some((r) => r.state !== 'done' && conflicts(r, request));
            const lease = table.tryAcquire(target.key, mode, { owner: { name: `r${request.seq}`, pid: request.seq } });
            expect(lease !== null).toBe(free);
            if (lease) requests.push({ ...request, state: 'held', lease });
          } else if (c.op === 'release') {
            const held = requests.filter((r) => r.state === 'held');
            const victim = held[c.pick % Math.max(held.length, 1)];
            if (victim) (victim.lease!.release(), (victim.state = 'done'));
          } else if (c.op === 'abort') {
            const waiting = requests.filter((r) => r.state === 'waiting');
            waiting[c.pick % Math.max(waiting.length, 1)]?.abort();
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
          // The snapshot lists exactly the held and waiting requests, each with its owner, key, mode and state.
          const listed = table.snapshot().map((entry) => `${entry.owner?.name} ${entry.key} ${entry.mode} ${entry.state}`);
          expect(listed.sort()).toEqual([...held, ...waiting].map((r) => `r${r.seq} ${r.key} ${r.mode} ${r.state}`).sort());
          // A gate hears of every wait's end, granted or not, once.
          expect(inGates).toBe(waiting.filter((r) => r.viaGate).length);
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

  test('snapshot shows each holder and waiter with its owner and since when, in queue order', async () => {
    const table = new LockTable();
    const editor = { name: 'editor', pid: 11 };
    const build = { name: 'build', pid: 12 };
    const before = Date.now();
    const reader = table.tryAcquire('a/:x', 'shared', { owner: editor })!;
    const writer = table.acquire('a/:x', 'exclusive', { owner: build });
    const clear = table.acquire('a/', 'subtree', { owner: { name: 'hoard cli' } });
    const after = Date.now();
    const entries = table.snapshot();
    expect(entries).toEqual([
      { key: 'a/:x', mode: 'shared', state: 'held', owner: editor, sinceMs: expect.any(Number) },
      { key: 'a/:x', mode: 'exclusive', state: 'waiting', owner: build, sinceMs: expect.any(Number) },
      { key: 'a/', mode: 'subtree', state: 'waiting', owner: { name: 'hoard cli' }, sinceMs: expect.any(Number) },
    ]);
    for (const entry of entries) expect(entry.sinceMs).toBeGreaterThanOrEqual(before), expect(entry.sinceMs).toBeLessThanOrEqual(after);
    reader.release();
    await writer;
    // Granted after its wait: held from its grant.
    expect(table.snapshot()[0]).toMatchObject({ owner: build, state: 'held', sinceMs: expect.any(Number) });
    expect(table.snapshot()[0]!.sinceMs).toBeGreaterThanOrEqual(after);
    (await writer).release();
    (await clear).release();
    expect(table.snapshot()).toEqual([]);
  });

  test('a gate can refuse a wait: the call rejects with its error and nothing is left queued', async () => {
    const table = new LockTable();
    const holder = table.tryAcquire(':x', 'exclusive')!;
    const refusal = new Error('too many');
    const gate: WaitGate = {
      enter: () => {
        throw refusal;
      },
      leave: () => expect.unreachable('a refused wait never began'),
    };
    await expect(table.acquire(':x', 'shared', { signal: gate })).rejects.toBe(refusal);
    await expect(table.acquire('', 'subtree', { signal: gate })).rejects.toBe(refusal);
    expect(table.stats()).toEqual({ held: 1, waiting: 0 });
    // A lock free at once never asks the gate.
    expect(table.acquire(':y', 'exclusive', { signal: gate })).toMatchObject({ held: true });
    holder.release();
    expect(table.tryAcquire('', 'subtree')).toBeNull();
  });

  test('dropping 300,000 waiters of one item, newest first, takes time linear in their number', async () => {
    // As when a client with that many queued requests disconnects: each removal used to search the item's queue
    // (about 5e10 steps, tens of seconds); now each is O(1). A liveness bound, not a timing target.
    const table = new LockTable();
    const holder = table.tryAcquire(':k', 'exclusive')!;
    const count = 300_000;
    const dropped = Array.from({ length: count }, () => (table.acquire(':k', 'shared') as Promise<Lease>).catch(() => 'dropped'));
    const last = table.acquire(':k', 'shared');
    const reason = new Error('closing');
    const started = performance.now();
    table.rejectWaiters(reason);
    const results = await Promise.all(dropped);
    const elapsedMs = performance.now() - started;
    expect(results.every((result) => result === 'dropped')).toBe(true);
    await expect(last).rejects.toBe(reason);
    expect(table.stats()).toEqual({ held: 1, waiting: 0 });
    // A liveness bound: 0.6 to 2 s here, 56.6 s when each removal searched the queue.
    expect(elapsedMs).toBeLessThan(30_000);
    holder.release();
    expect(table.stats()).toEqual({ held: 0, waiting: 0 });
  });
});
