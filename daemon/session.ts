import { timingSafeEqual } from 'node:crypto';
import { constants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import type { CacheItem, ListPage } from '../src/cache.js';
import { CacheError, isCacheError } from '../src/errors.js';
import { listPage } from '../src/cache-view.js';
import { type LocalBackend, type LocalGetSetHandle, storedRecordOf } from '../src/local-backend.js';
import type { CancelWait, LockOwner, SignalSource, WaitGate } from '../src/lock-table.js';
import { ROOT_SCOPE, type Scope, scopeOf } from '../src/scope-path.js';
import type { EncodedRecord, EncodedValue, ReferenceRecord, StoredFile, StoredRecord, VerifyReport } from '../src/store.js';
import {
  Clear,
  DEFAULT_LIST_LIMIT,
  Delete,
  DiscardFile,
  EnableReferences,
  type ChunkedItem,
  type FileItem,
  Gc,
  type GcResult,
  Get,
  type GetResult,
  GetSet,
  type GetSetResult,
  HandleSet,
  type HandleSetFileParams,
  HandleSetFile,
  type HandleSetParams,
  type InitializeParams,
  type InitializeResult,
  List,
  type ListParams,
  Locks,
  type LocksResult,
  PROTOCOL_VERSION,
  type AnyRequest,
  type RequestMethod,
  WriteChunk,
  CHUNK_WRITES_PER_CONNECTION,
  type WriteChunkParams,
  ReadChunk,
  type ReadChunkParams,
  ReserveFile,
  Set as SetItem,
  SetFile,
  type SetFileParams,
  type SetParams,
  Shutdown,
  Status,
  type StatusResult,
  Verify,
  type WireItem,
} from '../src/wire/protocol.js';
import { invalidParams, WireError } from '../src/wire/wire-error.js';
import { LogLimiter } from './log-limiter.js';
import { SessionReservations } from './session-reservations.js';
import { logText } from './log-text.js';

/** What every connection of one daemon shares. */
export interface DaemonContext {
  readonly backend: LocalBackend<EncodedValue, EncodedValue>;
  readonly version: string;
  readonly maxMessageBytes: number;
  /** How many of one connection's requests may wait for locks at once; past it, requests that would wait are refused. */
  readonly maxWaitersPerConnection: number;
  /** The clears (subtree locks) waiting in the whole daemon, which {@link MAX_WAITING_CLEARS} bounds. */
  readonly waitingClears: { count: number };
  /** Values answered by reference since the daemon started (`daemon/status` `referenceReads`). */
  referenceReads: number;
  /** Values answered as chunked items since the daemon started (`daemon/status` `chunkedReads`). */
  chunkedReads: number;
  /**
   * For a client that offered chunks: values of more bytes than this come as chunked items, read this many bytes at
   * a time; within a message, base64 included.
   */
  readonly chunkMaxBytes: number;
  /** The absolute path of a value's file, by its {@link StoredFile} name, for chunked reads. */
  readonly filePath?: ((name: string) => string) | undefined;
  /** The bytes of a value's file, for a value read by reference that goes inline after all. */
  readonly readFile?: ((file: StoredFile) => Uint8Array) | undefined;
  /**
   * Where values' files are, and the probe file whose token a client sends back to read them by path; `undefined`
   * when the daemon does not offer references.
   */
  readonly references?: { readonly probe: string; readonly blobDirectory: string; readonly token: Buffer } | undefined;
  /** Counts a `get` or `getset` result, a hit or a miss, for the top-level scope named `topScope` (`''`: the root). */
  count(topScope: string, hit: boolean): void;
  /** Issues a handle number never used before in this daemon, which doubles as the grant's token. */
  nextHandle(): number;
  /** The daemon's figures; with `scope`, that scope's too, counted from the data. */
  status(scope?: Scope): Promise<StatusResult>;
  locks(): LocksResult;
  gc(options: { dryRun: boolean }): Promise<GcResult>;
  verify(options: { fix: boolean }): Promise<VerifyReport>;
  /** Starts the daemon's one shutdown path. */
  requestStop(reason: string): void;
  log(message: string): void;
}

/**
 * How many clears one connection may have waiting, and the whole daemon: a waiting clear is ordered after every
 * earlier clear it overlaps and every waiter under its scope, so their cost grows with the square of their number
 * (10,000 queued clears took 17 s and 464 MiB), where no tool waits for more than a few at once.
 */
export const MAX_WAITING_CLEARS_PER_CONNECTION = 64;
export const MAX_WAITING_CLEARS = 1024;

/** The reason a wait ends when its request is cancelled. */
export const CANCELLED = Symbol('cancelled');

/** The longest client name kept for `daemon/locks`. */
const MAX_OWNER_NAME_LENGTH = 200;

/** Where a request's signal comes from, as a transport gives it: a function is called only if the request waits. */
export type RequestSignal = Exclude<SignalSource, WaitGate>;

/** Serves one method: answers synchronously when it can (a read whose lock is free), else with a promise. */
export type Handler<P, R> = (params: P, signal: RequestSignal) => R | Promise<R>;

type Held = { release(): void | Promise<void> } | LocalGetSetHandle<EncodedValue>;

/** Where a chunked item's bytes are read from: its value's file (pinned by the handle), or bytes the daemon holds. */
interface ChunkSource {
  readonly size: number;
  readonly path?: string;
  readonly bytes?: Uint8Array;
  /** The file, opened at the first chunk and closed at release (after the reads under way). */
  file?: Promise<FileHandle>;
}

/** The chunked items of one handle's answer. */
interface HandleChunks {
  item?: ChunkSource;
  stale?: ChunkSource;
}

/**
 * How many `cache/readChunk`s of one connection read at once; the rest wait their turn (their params only, at most
 * `--max-waiters` of them), and none starts while the client leaves its answers unread past the transport's output
 * high-water: a client that asks and does not read holds that and a few chunks in the daemon.
 */
export const CHUNK_READS_PER_CONNECTION = 4;

/** What a range read says when the handle was released before or during it. */
function chunkNotHeld(handle: number): CacheError {
  return new CacheError('CACHE_LOCK_NOT_HELD', `Handle ${handle} is not held on this connection (released, or another connection's).`);
}

/**
 * One client's session, whatever its transport: the handshake, the handles it holds, the requests it waits in,
 * and a handler per method. It owns its locks and waits: closing it ends the waits, then releases the locks.
 * Params arrive checked by their method's layout; the transports turn results and errors into messages.
 */
export class Session {
  readonly #context: DaemonContext;
  /** Granted handles by number: read leases and getset handles. */
  readonly #held = new Map<number, Held>();
  readonly #getsets = new WeakSet<Held>();
  /** How to end each of the session's requests that wait for a lock, in the order they began to wait. */
  readonly #waiting = new Set<CancelWait>();
  /** How many of {@link #waiting} are clears. */
  #waitingClears = 0;
  readonly #gone = new AbortController();
  readonly #handlers = new Map<AnyRequest, Handler<never, unknown>>();
  readonly #label: string;
  /** How the log names the client: its label, and once it has said it, its name (quoted and cut short). */
  #clientName: string;
  /** Who this session's lock requests come from, for `daemon/locks`: one object for all of them. */
  #owner: LockOwner;
  /** This client's lines in the log: a few a minute, the rest counted. */
  readonly #logLimit = new LogLimiter({ write: (line) => this.#context.log(`${this.#clientName}: ${line}`) });
  #initialized = false;
  /** The scope of the last request that named one, for {@link Session.#scopeOf}. */
  #lastScope: Scope | undefined;
  /** Whether the client proved it reads the daemon's files: then values kept in files are answered by reference. */
  #references = false;
  /** Whether the client offered chunks: then values over {@link DaemonContext.chunkMaxBytes} come as chunked items. */
  #chunks = false;
  /** The largest value an answer carries inline: the chunk size with chunks, else what fits in a message. */
  #inlineMaxBytes = Infinity;
  /** Handles whose answers carried chunked items, by number. */
  readonly #chunkSources = new Map<number, HandleChunks>();
  #chunkReads = 0;
  readonly #chunkReadQueue: (() => void)[] = [];
  /** Whether the transport stopped reading because the client leaves its answers unread. */
  #outputPaused = false;
  /** `cache/writeChunk`s of this connection under way, each holding its bytes: at most {@link CHUNK_WRITES_PER_CONNECTION}. */
  #chunkWrites = 0;
  /** The files reserved for values this client writes (`cache/reserveFile`), removed when the session ends. */
  readonly #reservations: SessionReservations;
  #closing: Promise<void> | undefined;
  #markClosed!: () => void;
  /** Resolves once the session has ended and its locks are released. */
  readonly closed = new Promise<void>((resolve) => (this.#markClosed = resolve));

  constructor(context: DaemonContext, label: string) {
    this.#context = context;
    this.#label = label;
    this.#clientName = label;
    this.#owner = Object.freeze({ name: label });
    this.#on(Get, (p, signal) => this.#get(this.#scopeOf(p.scope), p.id, p.wait, signal));
    this.#on(GetSet, (p, signal) => this.#getset(this.#scopeOf(p.scope), p.id, p.wait, this.#gate(signal)));
    this.#on(HandleSet, (p) => this.#handleSet(p));
    this.#on(SetItem, (p, signal) => this.#set(p, this.#gate(signal)));
    this.#on(Delete, (p, signal) => this.#context.backend.delete(this.#scopeOf(p.scope), p.id, { signal: this.#gate(signal), owner: this.#owner }));
    this.#on(Clear, (p, signal) => this.#context.backend.clear(scopeOf(p.scope), { signal: this.#gate(signal), owner: this.#owner }));
    this.#on(List, (p) => this.#list(p));
    this.#on(Status, (p) => this.#context.status(p.scope && scopeOf(p.scope)));
    this.#on(Locks, () => this.#context.locks());
    this.#on(Gc, (p) => this.#context.gc(p));
    this.#on(Verify, (p) => this.#context.verify(p));
    this.#on(Shutdown, () => this.#shutdown());
    this.#on(EnableReferences, (p) => this.#enableReferences(p.token));
    this.#on(ReadChunk, (p) => this.#readChunk(p));
    this.#reservations = new SessionReservations(context.backend);
    this.#on(ReserveFile, () => this.#reservations.reserve({ withPath: this.#references }));
    this.#on(HandleSetFile, (p) => this.#handleSetFile(p));
    this.#on(SetFile, (p, signal) => this.#setFile(p, this.#gate(signal)));
    this.#on(DiscardFile, (p) => this.#reservations.discard(p.reservation));
    this.#on(WriteChunk, (p) => this.#writeChunk(p));
  }

  /**
   * The scope named by `path`: the one of this session's last request when the names are the same (most clients
   * use a few scopes), so that the names are escaped and the scope made once, not per request.
   */
  #scopeOf(path: readonly string[]): Scope {
    if (path.length === 0) return ROOT_SCOPE;
    const last = this.#lastScope;
    if (last !== undefined && sameNames(last.path, path)) return last;
    return (this.#lastScope = scopeOf(path));
  }

  get initialized(): boolean {
    return this.#initialized;
  }

  #on<P, R>(method: RequestMethod<P, R>, handler: Handler<P, R>): void {
    this.#handlers.set(method, handler as Handler<never, unknown>);
  }

  /** The handler of `method`; before `initialize`, only `shutdown` has one that runs. */
  handler<P, R>(method: RequestMethod<P, R>): Handler<P, R> {
    const handler = this.#handlers.get(method) as Handler<P, R> | undefined;
    if (!handler) throw new WireError('CACHE_INVALID_REQUEST', `Unknown method ${method.method}.`);
    if (!this.#initialized && method !== Shutdown) {
      throw new WireError('CACHE_NOT_INITIALIZED', `Send initialize before ${method.method}.`);
    }
    return handler;
  }

  /** Checks the handshake and, when it succeeds, lets the other calls through. */
  initialize(params: InitializeParams, transport: 'json' | 'binary'): InitializeResult {
    const { version, maxMessageBytes } = this.#context;
    if (params.protocolVersion !== PROTOCOL_VERSION) {
      throw new WireError(
        'CACHE_PROTOCOL_MISMATCH',
        `The running hoard daemon (version ${version}) speaks protocol ${PROTOCOL_VERSION}, but this client ` +
          `speaks protocol ${params.protocolVersion}. Run \`hoard stop\` to stop the old daemon; the next connect starts ` +
          'one of the client\u2019s version, and the data is kept.',
        { daemonVersion: version, daemonProtocolVersion: PROTOCOL_VERSION, clientProtocolVersion: params.protocolVersion },
      );
    }
    if (params.clientName !== undefined) this.#clientName = `${logText(params.clientName)} (${this.#label})`;
    // A pid is shown as given only when it can be a process id (a u32 in binary answers).
    const pid = Number.isSafeInteger(params.pid) && params.pid! >= 0 && params.pid! <= 0xffff_ffff ? params.pid : undefined;
    this.#owner = Object.freeze({ name: params.clientName?.slice(0, MAX_OWNER_NAME_LENGTH) ?? this.#label, pid });
    this.#initialized = true;
    const { references, chunkMaxBytes } = this.#context;
    this.#chunks = params.chunks === true;
    // Without chunks, a value is refused only when its bytes alone (base64 in JSON) exceed a message.
    this.#inlineMaxBytes = this.#chunks ? chunkMaxBytes : transport === 'json' ? Math.floor(maxMessageBytes / 4) * 3 : maxMessageBytes;
    const offered = params.references && references ? { references: { probe: references.probe, blobDirectory: references.blobDirectory } } : {};
    const chunks = this.#chunks ? { chunks: { inlineMaxBytes: chunkMaxBytes, chunkMaxBytes } } : {};
    return {
      daemonVersion: version,
      protocolVersion: PROTOCOL_VERSION,
      pid: process.pid,
      capabilities: { valueTransfer: 'base64', transport, maxMessageBytes, ...offered, ...chunks },
    };
  }

  /** Answers by reference from now on if `token` is the probe's. */
  #enableReferences(token: string): { enabled: boolean } {
    const expected = this.#context.references?.token;
    const given = Buffer.from(token, 'utf8');
    this.#references = expected !== undefined && given.length === expected.length && timingSafeEqual(given, expected);
    return { enabled: this.#references };
  }

  /**
   * A record as this session's answers carry it: by reference when the client enabled references and the value is in
   * a file (which its handle pins); in chunks (its source kept in `chunks` under `which`) when the client offered them
   * and the value is over the inline limit; else with its bytes.
   * @throws CacheError `CACHE_VALUE_TOO_LARGE` for a value too large for a message, to a client without chunks.
   */
  #wireItem(
    record: StoredRecord<EncodedValue> | ReferenceRecord | undefined | null,
    chunks?: HandleChunks,
    which: 'item' | 'stale' = 'item',
  ): WireItem | null {
    if (!record) return null;
    const { file } = record;
    const encoding = 'value' in record ? record.value.encoding : record.encoding;
    if (file && this.#references) {
      this.#context.referenceReads++;
      const item: FileItem = { kind: 'file', modified: record.modified, encoding, size: file.lengthBytes, file: file.name };
      return record.expiresAtMs === undefined ? item : { ...item, expiresAtMs: record.expiresAtMs };
    }
    const size = file ? file.lengthBytes : (record as EncodedRecord).value.bytes.byteLength;
    if (size <= this.#inlineMaxBytes) {
      if ('value' in record) return record;
      // Read by reference (not to hold a large value whole), yet small enough to go inline to this client.
      const { readFile } = this.#context;
      if (!readFile || !file) throw new Error('a value read by reference without a way to read its file');
      const inline: EncodedRecord = { modified: record.modified, value: { encoding, bytes: readFile(file) } };
      return record.expiresAtMs === undefined ? inline : { ...inline, expiresAtMs: record.expiresAtMs, staleUntilMs: record.staleUntilMs };
    }
    if (!this.#chunks || !chunks) {
      throw new CacheError(
        'CACHE_VALUE_TOO_LARGE',
        `This value of ${size} bytes does not fit in a message of at most ${this.#context.maxMessageBytes} bytes (the daemon's ` +
          '--max-message-bytes); a client that offers chunks in initialize reads it in chunks.',
      );
    }
    const { filePath } = this.#context;
    chunks[which] = file && filePath ? { size, path: filePath(file.name) } : { size, bytes: (record as EncodedRecord).value.bytes };
    this.#context.chunkedReads++;
    const item: ChunkedItem = { kind: 'chunked', modified: record.modified, encoding, size };
    return record.expiresAtMs === undefined ? item : { ...item, expiresAtMs: record.expiresAtMs };
  }

  /** Keeps the chunk sources of handle `handle`'s answer, if it has any. */
  #keepChunks(handle: number, chunks: HandleChunks): void {
    if (chunks.item || chunks.stale) this.#chunkSources.set(handle, chunks);
  }

  /** Forgets a handle's chunk sources, closing their files once the reads under way end. */
  #dropChunks(handle: number): void {
    const chunks = this.#chunkSources.get(handle);
    if (!chunks) return;
    this.#chunkSources.delete(handle);
    for (const source of [chunks.item, chunks.stale]) {
      source?.file?.then((file) => file.close()).catch(() => {});
    }
  }

  /** Reads a range of a chunked item's value, at most {@link CHUNK_READS_PER_CONNECTION} of them at once. */
  async #readChunk(params: ReadChunkParams): Promise<Uint8Array> {
    const { handle, stale, offsetBytes, maxBytes } = params;
    const chunks = this.#chunkSources.get(handle);
    if (!chunks) {
      if (this.#held.has(handle)) throw invalidParams(`handle ${handle}'s answer carried no chunked item`);
      throw chunkNotHeld(handle);
    }
    const source = stale ? chunks.stale : chunks.item;
    if (!source) throw invalidParams(`handle ${handle}'s ${stale ? 'stale' : 'item'} is not a chunked item`);
    const limit = this.#context.chunkMaxBytes;
    if (maxBytes < 1 || maxBytes > limit) throw invalidParams(`maxBytes must be from 1 to ${limit} (chunks.chunkMaxBytes)`);
    if (offsetBytes > source.size) throw invalidParams(`offsetBytes ${offsetBytes} is past the end of the value (${source.size} bytes)`);
    const length = Math.min(maxBytes, source.size - offsetBytes);
    if (source.bytes) return source.bytes.subarray(offsetBytes, offsetBytes + length);
    if (this.#chunkReads >= CHUNK_READS_PER_CONNECTION || this.#outputPaused || this.#chunkReadQueue.length > 0) {
      const limit = this.#context.maxWaitersPerConnection;
      if (this.#chunkReadQueue.length >= limit) {
        throw new CacheError('CACHE_TOO_MANY_WAITERS', `This connection already has ${limit} chunk reads waiting, the daemon's limit (--max-waiters); read the answers first.`);
      }
      await new Promise<void>((resolve) => this.#chunkReadQueue.push(resolve));
      if (this.#chunkSources.get(handle) !== chunks) {
        this.#nextChunkRead();
        throw chunkNotHeld(handle);
      }
    }
    this.#chunkReads++;
    try {
      return await this.#readRange(handle, chunks, source, offsetBytes, length);
    } finally {
      this.#chunkReads--;
      this.#nextChunkRead();
    }
  }

  /** Appends a chunk to one of this connection's reservations (see {@link SessionReservations.append}). */
  async #writeChunk({ reservation, offsetBytes, bytes }: WriteChunkParams): Promise<void> {
    // Each chunk write holds its bytes until written: the chunk size bounds what a connection makes the daemon hold.
    const limit = this.#context.chunkMaxBytes;
    if (bytes.byteLength > limit) throw invalidParams(`a chunk is at most ${limit} bytes (chunks.chunkMaxBytes); this one has ${bytes.byteLength}`);
    if (this.#chunkWrites >= CHUNK_WRITES_PER_CONNECTION) {
      throw new CacheError(
        'CACHE_TOO_MANY_WAITERS',
        `This connection already has ${CHUNK_WRITES_PER_CONNECTION} chunk writes under way, the daemon's limit; wait for their answers before sending more.`,
      );
    }
    this.#chunkWrites++;
    try {
      await this.#reservations.append(reservation, offsetBytes, bytes);
    } finally {
      this.#chunkWrites--;
    }
  }

  #nextChunkRead(): void {
    if (this.#chunkReads < CHUNK_READS_PER_CONNECTION && (!this.#outputPaused || this.#gone.signal.aborted)) this.#chunkReadQueue.shift()?.();
  }

  /**
   * Told by the transport when it stops reading the client's messages because the client leaves its answers unread,
   * and when it reads again: chunk reads wait meanwhile, since they would only add to the answers waiting.
   */
  pauseOutput(paused: boolean): void {
    this.#outputPaused = paused;
    if (!paused) for (let n = this.#chunkReads; n < CHUNK_READS_PER_CONNECTION; n++) this.#nextChunkRead();
  }

  async #readRange(handle: number, chunks: HandleChunks, source: ChunkSource, offsetBytes: number, length: number): Promise<Uint8Array> {
    const bytes = Buffer.allocUnsafe(length);
    try {
      const file = await (source.file ??= open(source.path!, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK));
      let got = 0;
      while (got < length) {
        const { bytesRead } = await file.read(bytes, got, length - got, offsetBytes + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (got < length) {
        throw new CacheError('CACHE_CORRUPT', `The file of a stored value ends before its ${source.size} bytes: something other than hoard changed the cache directory.`);
      }
      return bytes;
    } catch (error) {
      // Released meanwhile: the file may be gone, or closed under the read.
      if (this.#chunkSources.get(handle) !== chunks) throw chunkNotHeld(handle);
      if (isCacheError(error)) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ELOOP') {
        throw new CacheError('CACHE_CORRUPT', 'The file of a stored value is missing: something other than hoard changed the cache directory.', { cause: error });
      }
      throw new CacheError('CACHE_STORAGE', 'Cannot read the file of a stored value.', { cause: error });
    }
  }

  /**
   * Lets one request wait for a lock while fewer than the limit of the session's requests wait, and keeps the way
   * to end its wait when the session closes.
   */
  #gate(signal: RequestSignal): WaitGate {
    let cancel: CancelWait | undefined;
    let clear = false;
    const clears = this.#context.waitingClears;
    return {
      enter: (end, mode) => {
        if (this.#gone.signal.aborted) throw this.#gone.signal.reason;
        if (mode === 'subtree') {
          if (this.#waitingClears >= MAX_WAITING_CLEARS_PER_CONNECTION || clears.count >= MAX_WAITING_CLEARS) {
            const [limit, whose] =
              this.#waitingClears >= MAX_WAITING_CLEARS_PER_CONNECTION ? [MAX_WAITING_CLEARS_PER_CONNECTION, 'This connection'] : [MAX_WAITING_CLEARS, 'The daemon'];
            throw new CacheError(
              'CACHE_TOO_MANY_WAITERS',
              `${whose} already has ${limit} clears waiting for locks, the daemon's limit; wait for some of them to end before clearing again.`,
            );
          }
        }
        const limit = this.#context.maxWaitersPerConnection;
        if (this.#waiting.size >= limit) {
          throw new CacheError(
            'CACHE_TOO_MANY_WAITERS',
            `This connection already has ${limit} requests waiting for locks, the daemon's limit (--max-waiters); ` +
              'wait for some of them to end before sending more.',
          );
        }
        const aborts = typeof signal === 'function' ? signal(end) : signal;
        this.#waiting.add((cancel = end));
        if (mode === 'subtree') {
          clear = true;
          this.#waitingClears++;
          clears.count++;
        }
        return aborts;
      },
      leave: () => {
        this.#waiting.delete(cancel!);
        if (clear) {
          this.#waitingClears--;
          clears.count--;
        }
      },
    };
  }

  /**
   * Logs a line about something this session's client did, named after it; at most 20 such lines a minute per
   * connection, the rest counted in one line. Quote any text the client chose with {@link logText}.
   */
  log(message: string): void {
    this.#logLimit.log(message);
  }

  /** Turns any failure into the error the client receives, logging the unexpected ones. */
  toWireError(error: unknown): WireError {
    if (error instanceof WireError) return error;
    if (error === CANCELLED) return new WireError('CACHE_CANCELLED', 'The request was cancelled.');
    if (isCacheError(error)) return new WireError(error.code, error.message);
    this.log(`internal error: ${error instanceof Error ? error.stack : String(error)}`);
    return new WireError('CACHE_INTERNAL', 'The daemon failed unexpectedly; its log has the details.');
  }

  /** Keeps a granted handle, unless the session ended while it was being granted. */
  async #keep(entry: Held): Promise<number> {
    if (this.#gone.signal.aborted) {
      await entry.release();
      throw new CacheError('CACHE_CONNECTION_LOST', 'The connection closed.');
    }
    const number = this.#context.nextHandle();
    this.#held.set(number, entry);
    return number;
  }

  #count(scope: Scope, item: unknown): void {
    this.#context.count(scope.path[0] ?? '', item !== null && item !== undefined);
  }

  /** Reads at once when the item's shared lock is free (no promise: most reads), else waits for it (unless told not to). */
  #get(scope: Scope, id: string, wait: boolean, signal: RequestSignal): GetResult | Promise<GetResult> {
    const { backend } = this.#context;
    // A client that reads by reference or in chunks gets large values without the daemon reading their files.
    let read = this.#gone.signal.aborted
      ? undefined
      : this.#references || this.#chunks
        ? backend.readNowByReference(scope, id, this.#owner)
        : backend.readNow(scope, id, this.#owner);
    if (read?.record && !('value' in read.record) && !this.#references && read.record.file.lengthBytes <= this.#inlineMaxBytes) {
      // Small enough to go inline after all: read it whole (the lock was free a moment ago, so most likely it still is).
      read.lease.release();
      read = backend.readNow(scope, id, this.#owner);
    }
    if (!read) return this.#getLater(scope, id, wait, signal);
    const { lease, record } = read;
    let item: WireItem | null;
    const chunks: HandleChunks = {};
    try {
      item = record && (record.file || (record as EncodedRecord).value.bytes.byteLength > this.#inlineMaxBytes) ? this.#wireItem(record, chunks) : ((record as EncodedRecord | undefined) ?? null);
    } catch (error) {
      lease.release();
      throw error;
    }
    this.#count(scope, record);
    const handle = this.#context.nextHandle();
    // The lease itself serves as the handle: its release is synchronous, and there is no closure to make.
    this.#held.set(handle, lease);
    this.#keepChunks(handle, chunks);
    return { handle, item };
  }

  async #getLater(scope: Scope, id: string, wait: boolean, signal: RequestSignal): Promise<GetResult> {
    // By reference, as readNow reads for a client that reads files or chunks: a value kept in a file is not read
    // whole into the daemon's memory.
    const reference = this.#references || this.#chunks;
    const options = wait ? { signal: this.#gate(signal), owner: this.#owner, reference } : { wait: false, owner: this.#owner, reference };
    const got = await this.#context.backend.get(scope, id, options);
    if (!got) return { handle: null, item: null };
    this.#count(scope, got.item);
    const chunks: HandleChunks = {};
    let item;
    try {
      item = this.#wireItem(await recordOf(got.item), chunks);
    } catch (error) {
      await got.release();
      throw error;
    }
    const handle = await this.#keep(got);
    this.#keepChunks(handle, chunks);
    return { handle, item };
  }

  async #getset(scope: Scope, id: string, wait: boolean, signal: WaitGate): Promise<GetSetResult> {
    const gs = await this.#context.backend.getset(scope, id, { wait, signal, owner: this.#owner, reference: this.#references || this.#chunks });
    if (!gs.set) return { handle: null, item: null, stale: null };
    this.#count(scope, gs.item);
    const chunks: HandleChunks = {};
    let item, stale;
    try {
      // A file cut short or gone since the getset checked it is a miss here too, as when the check found it.
      const [itemRecord, staleRecord] = [await recordOf(gs.item), await recordOf(gs.stale)];
      item = corruptAsMiss(() => this.#wireItem(itemRecord, chunks, 'item'));
      stale = corruptAsMiss(() => this.#wireItem(staleRecord, chunks, 'stale'));
    } catch (error) {
      await gs.release();
      throw error;
    }
    this.#getsets.add(gs);
    const handle = await this.#keep(gs);
    this.#keepChunks(handle, chunks);
    return { handle, item, stale };
  }

  async #handleSet({ handle, value, ttlMs, staleMs }: HandleSetParams): Promise<void> {
    await this.#heldGetSet(handle).set(value, expiryOf(ttlMs, staleMs));
  }

  /** @throws CacheError `CACHE_LOCK_NOT_HELD` for a number that is not a getset handle this connection holds. */
  #heldGetSet(handle: number): LocalGetSetHandle<EncodedValue> {
    const entry = this.#held.get(handle);
    if (!entry || !this.#getsets.has(entry)) {
      throw new CacheError('CACHE_LOCK_NOT_HELD', `Handle ${handle} holds no getset lock on this connection.`);
    }
    return entry as LocalGetSetHandle<EncodedValue>;
  }

  async #handleSetFile({ handle, reservation, encoding, ttlMs, staleMs }: HandleSetFileParams): Promise<void> {
    const gs = this.#heldGetSet(handle);
    await this.#reservations.commit(reservation, () => gs.commitFile(reservation, { encoding, ...expiryOf(ttlMs, staleMs) }));
  }

  async #setFile({ scope, id, reservation, encoding, modified, ttlMs, staleMs }: SetFileParams, signal: WaitGate): Promise<void> {
    const when = modified ?? Date.now() / 1000;
    if (!Number.isFinite(when)) throw invalidParams('modified must be a finite number');
    const options = { modified: when, encoding, signal, owner: this.#owner, ...expiryOf(ttlMs, staleMs) };
    await this.#reservations.commit(reservation, () => this.#context.backend.commitFile(scopeOf(scope), id, reservation, options));
  }

  async #list({ scope, cursor, limit }: ListParams): Promise<ListPage> {
    let listing;
    try {
      listing = await this.#context.backend.list(scopeOf(scope), { ...(cursor === undefined ? {} : { cursor }), limit: limit ?? DEFAULT_LIST_LIMIT });
    } catch (error) {
      // A cursor of another scope, or not one at all.
      if (error instanceof TypeError) throw invalidParams(error.message.replace(/\.$/, ''));
      throw error;
    }
    return listPage(listing);
  }

  /** Releases a handle; an unknown one (released already, or another connection's) is ignored. */
  release(handle: number): void {
    const entry = this.#held.get(handle);
    if (!entry) return;
    this.#held.delete(handle);
    if (this.#chunkSources.size > 0) this.#dropChunks(handle);
    void entry.release();
  }

  async #set({ scope, id, value, modified, ttlMs, staleMs }: SetParams, signal: WaitGate): Promise<void> {
    const when = modified ?? Date.now() / 1000;
    if (!Number.isFinite(when)) throw invalidParams('modified must be a finite number');
    await this.#context.backend.set(this.#scopeOf(scope), id, value, { modified: when, signal, owner: this.#owner, ...expiryOf(ttlMs, staleMs) });
  }

  /** Asks the daemon to stop once the answer to this request is on its way. */
  #shutdown(): void {
    this.#context.log(`shutdown requested by ${this.#clientName}`);
    setImmediate(() => this.#context.requestStop(`shutdown requested by ${this.#clientName}`));
  }

  /** Ends the session: aborts its waits and releases its locks; resolves once they are released. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#gone.abort(new CacheError('CACHE_CONNECTION_LOST', 'The connection closed.'));
      // Newest first: a request only ever waits behind earlier ones, so ending the newest never grants another
      // of this session's (oldest first, ending a queued clear could grant this session's set queued behind it).
      // Each wait ends directly, not through an abort signal, which costs an event apiece.
      for (const cancel of [...this.#waiting].reverse()) cancel(this.#gone.signal.reason);
      const handles = [...this.#held.values()];
      this.#held.clear();
      for (const handle of [...this.#chunkSources.keys()]) this.#dropChunks(handle);
      for (const waiting of this.#chunkReadQueue.splice(0)) waiting();
      await Promise.allSettled(handles.map(async (entry) => entry.release()));
      await this.#reservations.discardAll();
      this.#logLimit.flush();
      this.#markClosed();
    })();
    return this.#closing;
  }
}

/**
 * The stored record behind a handle's item (a {@link ReferenceRecord} for a value read by reference): the daemon's
 * values are the stored bytes, so decoding returns them.
 */
async function recordOf(item: CacheItem<EncodedValue> | null): Promise<EncodedRecord | ReferenceRecord | null> {
  if (!item) return null;
  const stored = storedRecordOf<EncodedValue>(item);
  if (stored) return stored;
  const value = await item.value();
  // `expires` is `expiresAtMs / 1000`, which `* 1000` gives back exactly.
  return item.expires === undefined || item.expires === null ? { modified: item.modified, value } : { modified: item.modified, value, expiresAtMs: item.expires * 1000 };
}

/** What `read` returns, or `null` when it throws `CACHE_CORRUPT` (a value's file missing or cut short). */
function corruptAsMiss(read: () => WireItem | null): WireItem | null {
  try {
    return read();
  } catch (error) {
    if (isCacheError(error, 'CACHE_CORRUPT')) return null;
    throw error;
  }
}

function sameNames(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let n = 0; n < a.length; n++) if (a[n] !== b[n]) return false;
  return true;
}

/** The expiry options of a write, only those given (the backend tells absent from `undefined` as the public API does). */
function expiryOf(ttlMs: number | undefined, staleMs: number | undefined): { ttlMs?: number; staleMs?: number } | undefined {
  if (ttlMs === undefined) return undefined;
  return staleMs === undefined ? { ttlMs } : { ttlMs, staleMs };
}

