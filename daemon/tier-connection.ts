import { createHash } from 'node:crypto';
import {
  ClientClosedError,
  ClientOfflineError,
  createClient,
  createCluster,
  DisconnectsClientError,
  ErrorReply,
  RedisClient,
  RESP_TYPES,
  type RedisArgument,
  type RedisClientOptions,
  type RedisClientType,
  type RedisClusterType,
} from '@redis/client';
import { PerKindLog } from '../src/per-kind-log.js';

/** How often a degraded tier is probed with a PING, and how often the subscriber connection is checked. */
export const TIER_HEARTBEAT_MS = 500;
/**
 * How many commands in a row may time out before the tier is degraded even though PINGs still answer (a Cluster shard
 * that stopped, a slow script): each sent after the previous one timed out, with no success between.
 */
export const TIER_TIMEOUTS_TO_DEGRADE = 3;
/** The most recent commands whose round trips make the latency figures. */
const LATENCY_SAMPLES = 1024;
/** Error replies that say the server cannot serve now (loading, failing over, a script running too long). */
const UNAVAILABLE_REPLIES = new Set(['LOADING', 'BUSY', 'MASTERDOWN', 'CLUSTERDOWN', 'TRYAGAIN', 'READONLY', 'NOREPLICAS']);
/**
 * Error replies that say the command may go through later while the server still answers (a Cluster's slot moving,
 * a disk Redis cannot persist to, a connection that lost its authentication, a memory full until keys expire or the
 * limit is raised): not answered for good.
 */
const TRANSIENT_REPLIES = new Set(['MOVED', 'ASK', 'MISCONF', 'NOAUTH', 'OOM']);

/** Whether an error reply is Redis's answer for good (an ACL's refusal, a script's error), not one trying again may get past. */
export function isAnsweredReply(error: unknown): boolean {
  if (!(error instanceof ErrorReply)) return false;
  const kind = errorKind(error);
  return !UNAVAILABLE_REPLIES.has(kind) && !TRANSIENT_REPLIES.has(kind);
}

/** What {@link TierConnection.run} rejects with: the tier is degraded or closed, or the command timed out, failed or was refused. */
export class TierUnavailable extends Error {
  override name = 'TierUnavailable';

  /**
   * Whether Redis answered the command with an error that trying again will not get past (a refusal, a script's
   * error); not for `MOVED`, `ASK`, `MISCONF`, `NOAUTH`, `OOM`, nor a server that cannot serve now (`LOADING`, `BUSY`, ...).
   */
  readonly answered: boolean;

  constructor(
    message: string,
    /** Whether Redis refused the command for want of permission (`NOPERM`: an ACL). */
    readonly refused = false,
    options?: { cause?: unknown; answered?: boolean },
  ) {
    super(message, options);
    this.answered = options?.answered ?? refused;
  }
}

/** What a command to a Cluster master marked down rejects with, at once (the node's going down was counted and logged). */
export class NodeDown extends TierUnavailable {
  override name = 'TierUnavailable';
}

/** A Lua script and its SHA1, for EVALSHA. */
export interface TierScript {
  readonly name: string;
  readonly source: string;
  readonly sha1: string;
}

/** A script from its Lua source. */
export function tierScript(name: string, source: string): TierScript {
  return Object.freeze({ name, source, sha1: createHash('sha1').update(source).digest('hex') });
}

/** How a reply's bulk strings come back: as strings (UTF-8), or as Buffers with `buffers`. */
export interface TierCommandOptions {
  readonly buffers?: boolean;
  /** On a Cluster, whether a replica may serve it (unused: every command goes to the shard's master). */
  readonly readonly?: boolean;
}

/**
 * The commands of one call to {@link TierConnection.run}, the same on one server and on a Cluster. Replies are RESP2's:
 * flat arrays for hashes, `XINFO STREAM` and `XRANGE`, integers as numbers, nil as `null`. `key` routes the command on a
 * Cluster (any key of the command's hash tag; the tier's own keys for keys without one).
 */
export interface TierClient {
  send<R = unknown>(key: string, args: readonly RedisArgument[], options?: TierCommandOptions): Promise<R>;
  /** Several commands to the node of `key` in one round trip (a pipeline, not a transaction); rejects on the first error reply. */
  pipeline(key: string, commands: readonly (readonly RedisArgument[])[], options?: TierCommandOptions): Promise<unknown[]>;
  /** Runs a script by EVALSHA, and by EVAL when the server does not have it yet; every key must share one hash tag. */
  script<R = unknown>(script: TierScript, keys: readonly string[], args: readonly RedisArgument[], options?: TierCommandOptions): Promise<R>;
  /**
   * Queues `INFO <section>` on the connection to the server of `key` (on a Cluster, its slot's master: node-redis would
   * send a bare INFO to every master), resolving once it is queued, so that a command sent after it to that server is
   * answered after it.
   */
  queueInfo(key: string, section: string): Promise<{ reply: Promise<string> }>;
}

export interface TierConnectionOptions {
  /** `redis://`, `rediss://` or `unix://` URLs: one server, or a Cluster's seed nodes (`cluster`). */
  readonly urls: readonly string[];
  readonly cluster: boolean;
  /** The ACL user and password; either overrides the URL's. */
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  /** What every command, connection attempt and PING may take before it counts as failed. */
  readonly timeoutMs: number;
  /** Scripts loaded (`SCRIPT LOAD`) on every master each time the tier comes up, so that EVALSHA finds them at once. */
  readonly scripts?: readonly TierScript[] | undefined;
  /** The CAs (PEM) that `rediss://` servers' certificates are checked against, instead of Node's trusted ones. */
  readonly ca?: string | undefined;
  log(line: string): void;
}

/** The tier's state as status shows it; `catching-up` is the change log's to say, through {@link TierConnection.setCatchingUp}. */
export type TierState = 'connected' | 'degraded' | 'catching-up';

export interface TierConnectionFigures {
  readonly latencyP50Ms: number | null;
  readonly latencyP99Ms: number | null;
  readonly errors: number;
  readonly refused: number;
  readonly lastError: string | null;
  readonly state: TierState;
  /** The Cluster masters (`host:port`) marked down: commands to their slots fail at once until they answer a PING. */
  readonly downNodes: readonly string[];
}

export interface TierSubscriptionHandlers {
  message(text: string): void;
  /** After each (re)subscription, the first included: messages may have been missed before it, so catch up. */
  ready(): void;
  /** When the subscriber connection drops or its heartbeat times out: messages may be missed until the next `ready`. */
  lost(): void;
}

interface Subscription {
  readonly handlers: TierSubscriptionHandlers;
  readonly listener: (message: string) => void;
  /** Whether messages arrive now: subscribed on the current subscriber client, and not lost since. */
  live: boolean;
  /** Resolves the first time the subscription is live. */
  readonly firstLive: Promise<void>;
  markFirstLive(): void;
}

type Client = RedisClientType<{}, {}, {}, 2>;
type Cluster = RedisClusterType<{}, {}, {}, 2>;
type Connector = { socket: NonNullable<RedisClientOptions['socket']>; database?: number };

/** One Cluster master's health, by its address. */
interface NodeHealth {
  /** Commands to it timed out in a row (each sent after the previous one timed out), and when the last of them did. */
  timeoutsInRow: number;
  lastTimeoutMs: number;
  /** Whether commands to its slots fail at once, until it answers a PING. */
  down: boolean;
  ping: Promise<boolean> | undefined;
  /** The PING sent to it that has not been answered yet: a stopped node is sent no other, so none pile up in its queue. */
  unanswered: Promise<unknown> | undefined;
}

/** What one call's commands to a Cluster tell its connection: which masters they went to, and what those did. */
interface ClusterCall {
  /** Each master with commands of this call under way, and how many. */
  readonly sent: Map<string, number>;
  /** Throws {@link NodeDown} when the master is marked down. */
  check(address: string): void;
  /** The master answered (a reply or an error reply): it is not stopped. */
  answered(address: string): void;
}

const BUFFERS = { [RESP_TYPES.BLOB_STRING]: Buffer } as const;

/** The delay before each reconnection attempt: quick at first, never more than half a second apart. */
function reconnectDelayMs(retries: number): number {
  return Math.min(50 * (retries + 1), 500);
}

/** The URL without its credentials, for logs and status. */
function displayUrl(url: string): string {
  return url.replace(/^([a-z]+:\/\/)[^@/]*@/i, '$1');
}

/** The first word of an error reply (`NOPERM`, `WRONGTYPE`); the error's class name for anything else. */
function errorKind(error: unknown): string {
  if (error instanceof ErrorReply) return /^[A-Z]+/.exec(error.message)?.[0] ?? 'ERR';
  if (error instanceof TierUnavailable) return error.message.startsWith('timed out') ? 'timeout' : 'unavailable';
  return (error as { code?: unknown })?.code === undefined ? ((error as Error)?.name ?? 'Error') : String((error as { code: unknown }).code);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A failure that only follows from the connection being down or remade already: it says nothing new. */
function isAftermath(error: unknown): boolean {
  return error instanceof ClientOfflineError || error instanceof ClientClosedError || error instanceof DisconnectsClientError;
}

/** A programming mistake in a command callback: passed on as it is, never counted as the tier failing. */
function isMistake(error: unknown): boolean {
  return error instanceof TypeError || error instanceof RangeError || error instanceof SyntaxError || error instanceof ReferenceError;
}

/**
 * The daemon's connections to the tier: a main connection for commands (one client, or a Cluster client) and a
 * dedicated subscriber connection, with the timeouts, health and figures the shared tier needs.
 *
 * Every command is raced against `timeoutMs`, and node-redis's offline queue is off, so nothing waits on a Redis that
 * is down. A command that times out fails alone, and sends a PING at once: the tier is degraded only when that PING
 * fails or times out too, or after {@link TIER_TIMEOUTS_TO_DEGRADE} timeouts in a row. A failure of the connection
 * (a reset, a refusal, a wrong password) degrades it at once. While degraded, {@link TierConnection.run} rejects at
 * once, and a PING every {@link TIER_HEARTBEAT_MS} restores it when it answers. A PING that times out means a
 * connection into a black hole (no reset ever comes): the client is then destroyed and made again. No `error` event
 * or rejection of node-redis's is left unhandled.
 *
 * On a Cluster, a timeout of a command whose master is known (every command with a routing key) is that master's
 * alone: it PINGs that master, and marks it down when the PING fails or times out too, or after
 * {@link TIER_TIMEOUTS_TO_DEGRADE} timeouts in a row on it. Commands to a master marked down fail at once while the
 * tier stays up for the others' slots; the heartbeat PINGs it and clears the mark when it answers, or when it no
 * longer serves any slot (a failover). The tier is degraded when every master is down.
 */
export class TierConnection {
  readonly url: string;
  readonly #options: TierConnectionOptions;
  readonly #connectors: Connector[];
  /** Whether the URLs are `rediss://`: then every connection is TLS, those to a Cluster's nodes found later included. */
  readonly #tls: boolean;
  readonly #username: string | undefined;
  readonly #password: string | undefined;
  #main: Client | Cluster | undefined;
  #facade: TierClient | undefined;
  #up = false;
  /** Whether the tier was ever up: its coming back is then logged. */
  #wasUp = false;
  #catchingUp = false;
  #closed = false;
  #opened: Promise<void> | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #mainPing: Promise<void> | undefined;
  #subscriber: Client | undefined;
  /** Whether the subscriber client has subscribed every channel (then it is PINGed on each beat). */
  #subscriberLive = false;
  #subscriberPing: Promise<void> | undefined;
  /** Which seed the next subscriber connects to: each remake tries the next, so one dead seed of a Cluster is left. */
  #subscriberSeed = 0;
  readonly #subscriptions = new Map<string, Subscription>();
  readonly #stateListeners = new Set<(up: boolean) => void>();
  readonly #latencies = new Float64Array(LATENCY_SAMPLES);
  #latencyCount = 0;
  #errors = 0;
  #refused = 0;
  /** Commands timed out in a row (each sent after the previous one timed out), and when the last of them did. */
  #timeoutsInRow = 0;
  #lastTimeoutMs = -Infinity;
  /** Whether a failure was counted since the tier was last up (or since the start): it is counted once. */
  #downCounted = false;
  #lastError: string | null = null;
  /** The health of the Cluster masters that timed out, by address; empty on one server, and for each new Cluster client. */
  readonly #nodes = new Map<string, NodeHealth>();
  /** At most one log line a minute per kind of failure. */
  readonly #logged: PerKindLog;

  constructor(options: TierConnectionOptions) {
    if (options.urls.length === 0) throw new TypeError('The tier needs at least one URL.');
    if (!(options.timeoutMs > 0)) throw new TypeError(`The tier's timeoutMs must be positive: ${options.timeoutMs}`);
    this.#options = options;
    this.#logged = new PerKindLog((line) => options.log(line));
    let username: string | undefined;
    let password: string | undefined;
    this.#connectors = options.urls.map((text) => {
      let parsed: ReturnType<typeof RedisClient.parseURL>;
      try {
        parsed = RedisClient.parseURL(text);
      } catch {
        throw new TypeError(`The tier's URL must be redis://, rediss:// or unix://: ${displayUrl(text)}`);
      }
      username ??= parsed.username;
      password ??= parsed.password;
      const isUnix = 'path' in parsed.socket;
      if (isUnix && options.cluster) throw new TypeError('A Redis Cluster is reached over TCP: a unix:// URL cannot be one of its seeds.');
      const tls = (parsed.socket as { tls?: boolean }).tls === true;
      const socket = {
        ...parsed.socket,
        connectTimeout: options.timeoutMs,
        reconnectStrategy: reconnectDelayMs,
        ...(tls && options.ca !== undefined && { ca: options.ca }),
      };
      return { socket, ...(parsed.database === undefined ? {} : { database: parsed.database }) } as Connector;
    });
    if (!options.cluster && this.#connectors.length > 1) throw new TypeError('Several tier URLs are the seeds of a Redis Cluster: set cluster.');
    const tlsCount = this.#connectors.filter((connector) => (connector.socket as { tls?: boolean }).tls === true).length;
    if (tlsCount !== 0 && tlsCount !== this.#connectors.length) {
      throw new TypeError("A Redis Cluster's seed nodes are all redis:// or all rediss://: TLS is the whole cluster's setting.");
    }
    this.#tls = tlsCount > 0;
    if (options.ca !== undefined && !this.#tls) throw new TypeError('A CA is for rediss:// URLs: the tier URL does not use TLS.');
    this.#username = options.username ?? username;
    this.#password = options.password ?? password;
    this.url = options.urls.map(displayUrl).join(',');
  }

  /** Whether commands go to Redis now; false while degraded (then {@link TierConnection.run} rejects at once) or closed. */
  get up(): boolean {
    return this.#up && !this.#closed;
  }

  /**
   * Starts connecting; resolves once connected, or once the first attempt failed or took `timeoutMs` (the tier is then
   * degraded, and comes up by itself when Redis answers). Never rejects.
   */
  open(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#opened ??= (async () => {
      this.#heartbeat = setInterval(() => this.#beat(), TIER_HEARTBEAT_MS);
      this.#heartbeat.unref();
      const { main, connected } = this.#makeMain();
      // The first connection (a Cluster's: its slots known too), its first error, or the timeout, whichever comes first.
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        void connected.then(resolve);
        main.once('error', resolve);
        timer = setTimeout(resolve, this.#options.timeoutMs);
      });
      clearTimeout(timer);
      await this.#probe();
    })();
    return this.#opened;
  }

  /**
   * Runs one call's commands on the main connection within `timeoutMs`, measures its round trip, and counts a failure
   * (an error reply with `NOPERM` as refused); a failure of the connection marks the tier degraded, a timeout probes it.
   * @throws TierUnavailable when degraded or closed, timed out or failed; a callback's own `TypeError` as it is.
   */
  async run<R>(what: string, command: (client: TierClient) => Promise<R>): Promise<R> {
    const facade = this.#facade;
    if (this.#closed) throw new TierUnavailable('the tier is closed');
    if (!this.#up || facade === undefined) throw new TierUnavailable(`the tier is degraded: ${this.#lastError ?? 'not connected yet'}`);
    const main = this.#main;
    const call = this.#options.cluster ? this.#clusterCall() : undefined;
    const client = call === undefined ? facade : clusterFacade(main as Cluster, call);
    const startedMs = performance.now();
    try {
      const result = await this.#withTimeout(command(client));
      this.#addLatency(performance.now() - startedMs);
      this.#timeoutsInRow = 0;
      return result;
    } catch (error) {
      if (isMistake(error) || error instanceof NodeDown) throw error;
      // The masters whose commands were still under way when the call failed (timed out).
      const waitedOn = call === undefined || this.#main !== main ? [] : [...call.sent.keys()];
      throw this.#failed(what, error, startedMs, waitedOn);
    }
  }

  /** Calls `listener` with false when the tier becomes degraded, with true when it comes back; returns the unsubscribe. */
  onStateChange(listener: (up: boolean) => void): () => void {
    this.#stateListeners.add(listener);
    return () => this.#stateListeners.delete(listener);
  }

  /** What the change log says: while it catches up after a cut, `figures().state` is `catching-up`. */
  setCatchingUp(catchingUp: boolean): void {
    this.#catchingUp = catchingUp;
  }

  /**
   * Subscribes to `channel` on the subscriber connection, resubscribing after every reconnection; resolves once
   * subscribed, or once the first attempt failed or took `timeoutMs` (it goes on in the background). Never rejects.
   */
  async subscribe(channel: string, handlers: TierSubscriptionHandlers): Promise<void> {
    if (this.#closed) return;
    if (this.#subscriptions.has(channel)) throw new TypeError(`Already subscribed to ${channel}`);
    let markFirstLive!: () => void;
    const firstLive = new Promise<void>((resolve) => (markFirstLive = resolve));
    const subscription: Subscription = { handlers, live: false, listener: (message) => this.#deliver(channel, message), firstLive, markFirstLive };
    this.#subscriptions.set(channel, subscription);
    // A subscriber still connecting subscribes every channel once connected, this one included.
    if (this.#subscriber === undefined) this.#makeSubscriber();
    else if (this.#subscriberLive) void this.#subscribeOn(this.#subscriber, channel, subscription);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([firstLive, new Promise<void>((resolve) => (timer = setTimeout(resolve, this.#options.timeoutMs)))]);
    clearTimeout(timer);
  }

  figures(): TierConnectionFigures {
    const count = Math.min(this.#latencyCount, LATENCY_SAMPLES);
    let latencyP50Ms: number | null = null;
    let latencyP99Ms: number | null = null;
    if (count > 0) {
      const sorted = this.#latencies.slice(0, count).sort();
      const at = (fraction: number) => Math.round(sorted[Math.min(count - 1, Math.ceil(fraction * count) - 1)]! * 100) / 100;
      latencyP50Ms = at(0.5);
      latencyP99Ms = at(0.99);
    }
    return {
      latencyP50Ms,
      latencyP99Ms,
      errors: this.#errors,
      refused: this.#refused,
      lastError: this.#lastError,
      state: !this.up ? 'degraded' : this.#catchingUp ? 'catching-up' : 'connected',
      downNodes: [...this.#nodes].filter(([, node]) => node.down).map(([address]) => address).sort(),
    };
  }

  /** Closes both connections; commands under way reject. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#heartbeat);
    this.#subscriptions.clear();
    if (this.#subscriber !== undefined) this.#dropSubscriber(this.#subscriber, new Error('closed'));
    const main = this.#main;
    this.#main = undefined;
    this.#facade = undefined;
    if (main === undefined) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([main.close().catch(() => {}), new Promise((resolve) => (timer = setTimeout(resolve, this.#options.timeoutMs)))]);
    clearTimeout(timer);
    main.destroy();
  }

  #clientOptions(connector: Connector, offlineQueue: boolean): RedisClientOptions<{}, {}, {}, 2> {
    return {
      socket: connector.socket,
      ...(connector.database === undefined ? {} : { database: connector.database }),
      username: this.#username,
      password: this.#password,
      RESP: 2,
      disableOfflineQueue: !offlineQueue,
      maintNotifications: 'disabled',
    } as RedisClientOptions<{}, {}, {}, 2>;
  }

  #makeMain(): { main: Client | Cluster; connected: Promise<void> } {
    let main: Client | Cluster;
    if (this.#options.cluster) {
      // The nodes that CLUSTER SLOTS names are reached with these defaults: TLS (and its CA) too, as the seeds were.
      // Each node's certificate is checked against the address the cluster announces for it.
      const defaults = {
        ...this.#clientOptions(this.#connectors[0]!, false),
        socket: {
          connectTimeout: this.#options.timeoutMs,
          reconnectStrategy: reconnectDelayMs,
          ...(this.#tls && { tls: true, ...(this.#options.ca !== undefined && { ca: this.#options.ca }) }),
        },
      };
      main = createCluster({
        // The seeds only serve discovery (CLUSTER SLOTS on a connection of its own): one that does not answer within
        // the timeout (a stopped process still accepts connections) is left for the next, instead of holding it up.
        rootNodes: this.#connectors.map((connector) => ({ socket: { ...connector.socket, socketTimeout: this.#options.timeoutMs } as never })),
        defaults: defaults as never,
        RESP: 2,
        // Each master is connected to when a command first goes there, not all of them during discovery: a client
        // made while one master is stopped or unreachable is ready all the same, and that master alone is found down.
        minimizeConnections: true,
      }) as unknown as Cluster;
    } else {
      main = createClient(this.#clientOptions(this.#connectors[0]!, false)) as unknown as Client;
    }
    main.on('error', (error: unknown) => {
      if (this.#main === main) this.#degrade('connection', error);
    });
    // A ready connection is probed at once rather than at the next beat: the tier comes back sooner.
    main.on('ready', () => {
      if (this.#main === main && !this.#up) void this.#probe();
    });
    this.#main = main;
    // A new client's connections are new: what the old one found of each node is forgotten.
    this.#nodes.clear();
    this.#facade = this.#options.cluster ? clusterFacade(main as Cluster) : clientFacade(main as Client);
    const connected = main.connect().then(
      () => {
        if (this.#main === main && !this.#up) void this.#probe();
      },
      (error: unknown) => {
        if (this.#main === main) this.#degrade('connection', error);
      },
    );
    return { main, connected };
  }

  #remakeMain(): void {
    const old = this.#main;
    if (old === undefined || this.#closed) return;
    this.#main = undefined;
    this.#facade = undefined;
    old.destroy();
    this.#makeMain();
  }

  /** PINGs the main connection: restores a degraded tier when it answers; remakes the client when the PING times out. */
  #probe(): Promise<void> {
    this.#mainPing ??= (async () => {
      const facade = this.#facade;
      const main = this.#main;
      if (facade === undefined || main === undefined) return;
      const cluster = this.#options.cluster ? (main as Cluster) : undefined;
      if (cluster !== undefined && !cluster.isOpen) {
        // Its discovery failed at every seed, and a Cluster client does not try again by itself: a new one does.
        this.#remakeMain();
        return;
      }
      const startedMs = performance.now();
      try {
        // A Cluster's masters are PINGed each on its own connection: those that do not answer are marked down.
        const answered = cluster?.isReady === true ? await this.#pingMasters(cluster) : undefined;
        if (answered === undefined) {
          await this.#withTimeout(facade.send('', ['PING']));
          this.#addLatency(performance.now() - startedMs);
        }
        if (this.#facade !== facade || this.#closed) return;
        // Best effort, each time the tier comes up (a probe of a tier that is up only decides a timeout): a node
        // without them still runs them by EVAL.
        if (!this.#up) await this.#withTimeout(this.#loadScripts(answered)).catch(() => {});
        if (this.#facade !== facade || this.#closed) return;
        this.#restore();
      } catch (error) {
        if (this.#facade !== facade || this.#closed) return;
        // A probe of a tier that is up was sent by a timeout, which was counted; while degraded, #degrade counts only
        // the failure that keeps a tier from ever coming up.
        const counted = this.#up;
        if (error instanceof TierUnavailable) {
          // No answer within the timeout: a black hole, or a server that stopped; a new connection finds out.
          this.#degrade('timeout', new TierUnavailable(`timed out: PING took over ${this.#options.timeoutMs} ms`), { counted });
          this.#remakeMain();
        } else {
          this.#degrade('connection', error, { counted });
        }
      }
    })().finally(() => (this.#mainPing = undefined));
    return this.#mainPing;
  }

  /**
   * PINGs every master of the Cluster (as {@link TierConnection.#pingNode}: those that fail or time out are marked
   * down) and gives the addresses of those that answered.
   * @throws TierUnavailable when none answered.
   */
  async #pingMasters(cluster: Cluster): Promise<Set<string>> {
    const answered = new Set<string>();
    await Promise.all(
      cluster.masters.map(async ({ address }) => {
        if (await this.#pingNode(address)) answered.add(address);
      }),
    );
    if (answered.size === 0) throw new TierUnavailable(`timed out: no node answered a PING within ${this.#options.timeoutMs} ms`);
    return answered;
  }

  /** Loads the scripts on the server, or on the masters of a Cluster (those at `addresses` when given). */
  async #loadScripts(addresses?: ReadonlySet<string>): Promise<void> {
    const scripts = this.#options.scripts ?? [];
    const main = this.#main;
    if (scripts.length === 0 || main === undefined) return;
    const cluster = main as Cluster;
    const masters = addresses === undefined ? cluster.masters : cluster.masters.filter((master) => addresses.has(master.address));
    const nodes = this.#options.cluster ? await Promise.all(masters.map((master) => cluster.nodeClient(master))) : [main as Client];
    await Promise.all(nodes.flatMap((node) => scripts.map((script) => node.sendCommand(['SCRIPT', 'LOAD', script.source]))));
  }

  #beat(): void {
    if (this.#closed) return;
    if (!this.#up) void this.#probe();
    for (const [address, node] of this.#nodes) if (node.down) void this.#pingNode(address);
    if (this.#subscriber === undefined) {
      if (this.#subscriptions.size > 0) this.#makeSubscriber();
    } else if (this.#subscriberLive) {
      void this.#pingSubscriber(this.#subscriber);
    }
  }

  #restore(): void {
    if (this.#up || this.#closed) return;
    const again = this.#wasUp || this.#lastError !== null;
    this.#up = true;
    this.#wasUp = true;
    this.#downCounted = false;
    // The reason it was degraded is history now (the log keeps it): status shows no error for a connected tier.
    this.#lastError = null;
    if (this.#subscriber === undefined && this.#subscriptions.size > 0) this.#makeSubscriber();
    if (again) this.#log('restored', `tier: connected to ${this.url} again`);
    for (const listener of this.#stateListeners) listener(true);
  }

  /**
   * Logs a failure of the connection and marks the tier degraded; counts it in `errors` when it is what degrades the
   * tier (or keeps it from ever coming up: a refused connection, a wrong password) unless `counted` says a command's
   * failure was counted for it already.
   */
  #degrade(kind: string, error: unknown, options: { counted?: boolean } = {}): void {
    if (this.#closed) return;
    const wasUp = this.#up;
    // While degraded, "offline" (or "disconnected", a command cut off when the client was remade) says nothing new:
    // keep the reason found first (a refused connection, a timeout).
    if (!wasUp && this.#lastError !== null && isAftermath(error)) return;
    // Once per time down; "offline" (a client still connecting when open() PINGs it) is no failure of its own.
    if (options.counted !== true && !isAftermath(error) && (wasUp || !this.#downCounted)) this.#errors++;
    if (options.counted === true || !isAftermath(error)) this.#downCounted = true;
    this.#timeoutsInRow = 0;
    this.#lastError = describe(error);
    this.#up = false;
    this.#log(kind, `tier: ${this.url} unavailable: ${this.#lastError}`);
    if (wasUp) for (const listener of this.#stateListeners) listener(false);
  }

  /**
   * Counts a failed command (sent at `startedMs`), logs it, and gives what `run` rejects with. A failure of the
   * connection degrades the tier; a timeout sends a PING to decide, and degrades it when it is the
   * {@link TIER_TIMEOUTS_TO_DEGRADE}th in a row.
   */
  #failed(what: string, error: unknown, startedMs: number, waitedOn: readonly string[] = []): TierUnavailable {
    this.#errors++;
    const kind = errorKind(error);
    const message = `${what}: ${describe(error)}`;
    if (error instanceof ErrorReply && !UNAVAILABLE_REPLIES.has(kind)) {
      // The server answered: the tier is up, this command was refused.
      const refused = kind === 'NOPERM';
      if (refused) this.#refused++;
      this.#lastError = message;
      this.#timeoutsInRow = 0;
      this.#log(kind, `tier: ${what} ${refused ? 'refused' : 'failed'}: ${describe(error)}`);
      return new TierUnavailable(message, refused, { cause: error, answered: isAnsweredReply(error) });
    }
    if (kind === 'timeout' && this.#up && waitedOn.length > 0) {
      // On a Cluster, the masters it waited on decide, each for its own slots: the others' are not affected.
      this.#lastError = message;
      this.#log(kind, `tier: ${message}`);
      for (const address of waitedOn) this.#nodeTimedOut(address, startedMs);
      return new TierUnavailable(message, false, { cause: error });
    }
    if (kind === 'timeout' && this.#up) {
      // One slow reply (a busy machine, a slow command) fails this call alone. Commands that were under way together
      // count once in the row: only one sent after the last counted timeout adds to it.
      if (startedMs >= this.#lastTimeoutMs) {
        this.#timeoutsInRow++;
        this.#lastTimeoutMs = performance.now();
      }
      if (this.#timeoutsInRow < TIER_TIMEOUTS_TO_DEGRADE) {
        this.#lastError = message;
        this.#log(kind, `tier: ${message}`);
        void this.#probe();
        return new TierUnavailable(message, false, { cause: error });
      }
    }
    this.#degrade(kind, isAftermath(error) ? error : new Error(message), { counted: true });
    return new TierUnavailable(message, false, { cause: error });
  }

  /** What one call's commands tell about the Cluster's masters they went to. */
  #clusterCall(): ClusterCall {
    const sent = new Map<string, number>();
    return {
      sent,
      check: (address) => {
        const node = this.#nodes.get(address);
        if (node?.down === true) throw new NodeDown(`the tier's node ${address} is down: ${this.#lastError ?? 'no answer'}`);
      },
      answered: (address) => {
        const node = this.#nodes.get(address);
        if (node !== undefined && !node.down) node.timeoutsInRow = 0;
      },
    };
  }

  /**
   * Counts a command to the master at `address` (sent at `startedMs`) that timed out: PINGs it, or marks it down when
   * it is the {@link TIER_TIMEOUTS_TO_DEGRADE}th in a row.
   */
  #nodeTimedOut(address: string, startedMs: number): void {
    const node = this.#node(address);
    if (node.down) return;
    // Commands that were under way together count once in the row, as for the whole tier.
    if (startedMs >= node.lastTimeoutMs) {
      node.timeoutsInRow++;
      node.lastTimeoutMs = performance.now();
    }
    if (node.timeoutsInRow >= TIER_TIMEOUTS_TO_DEGRADE) this.#markDown(address, `${node.timeoutsInRow} commands in a row timed out`);
    else void this.#pingNode(address);
  }

  /**
   * PINGs the Cluster master at `address` on its own connection: marks it down when the PING fails or times out,
   * clears its mark when it answers; forgets it when it is no master any more (its slots moved: nothing goes there).
   * Resolves to whether it answered.
   */
  #pingNode(address: string): Promise<boolean> {
    const node = this.#node(address);
    node.ping ??= (async () => {
      const cluster = this.#main as Cluster | undefined;
      const master = cluster?.masters.find((candidate) => candidate.address === address);
      if (cluster === undefined || master === undefined) {
        this.#nodes.delete(address);
        return false;
      }
      const stale = (): boolean => this.#closed || this.#main !== cluster || this.#nodes.get(address) !== node;
      try {
        node.unanswered ??= cluster
          .nodeClient(master)
          .then((client) => client.sendCommand(['PING']))
          .finally(() => (node.unanswered = undefined));
        await this.#withTimeout(node.unanswered);
        if (stale()) return false;
        if (node.down) {
          node.down = false;
          node.timeoutsInRow = 0;
          this.#log(`up ${address}`, `tier: node ${address} answers again`);
        }
        return true;
      } catch (error) {
        if (stale() || isMistake(error)) return false;
        const reason = error instanceof TierUnavailable ? `PING took over ${this.#options.timeoutMs} ms` : `PING failed: ${describe(error)}`;
        this.#markDown(address, reason);
        return false;
      }
    })().finally(() => (node.ping = undefined));
    return node.ping;
  }

  /** Marks the Cluster master at `address` down (logged, at most a line a minute each); the tier too when every master is. */
  #markDown(address: string, reason: string): void {
    const node = this.#nodes.get(address);
    if (node === undefined || node.down) return;
    node.down = true;
    node.timeoutsInRow = 0;
    this.#lastError = `node ${address} is down: ${reason}`;
    this.#log(`down ${address}`, `tier: node ${address} is down (${reason}): commands to its slots fail at once until it answers a PING`);
    const masters = (this.#main as Cluster | undefined)?.masters ?? [];
    if (this.#up && masters.length > 0 && masters.every((master) => this.#nodes.get(master.address)?.down === true)) {
      // Nothing answers: as a tier whose PING times out, degraded, and its client made again (a black hole).
      this.#degrade('timeout', new Error(`every node is down: ${reason}`), { counted: true });
      this.#remakeMain();
      return;
    }
    // The other masters are PINGed too: when the network is cut rather than one node stopped, none answers, and the
    // tier is degraded (above) as one whose PING timed out.
    for (const master of masters) if (this.#nodes.get(master.address)?.down !== true) void this.#pingNode(master.address);
  }

  #node(address: string): NodeHealth {
    let node = this.#nodes.get(address);
    if (node === undefined) {
      node = { timeoutsInRow: 0, lastTimeoutMs: -Infinity, down: false, ping: undefined, unanswered: undefined };
      this.#nodes.set(address, node);
    }
    return node;
  }

  #withTimeout<R>(promise: Promise<R>): Promise<R> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TierUnavailable(`timed out after ${this.#options.timeoutMs} ms`)), this.#options.timeoutMs);
    });
    // The command settles later (or when its client is destroyed): that rejection is handled here.
    promise.catch(() => {});
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  #addLatency(ms: number): void {
    this.#latencies[this.#latencyCount % LATENCY_SAMPLES] = ms;
    this.#latencyCount++;
  }

  #log(kind: string, line: string): void {
    this.#logged.log(kind, line);
  }

  /**
   * Makes a subscriber client and subscribes every channel on it once connected. It never reconnects by itself: when
   * its connection drops, it is thrown away and the next heartbeat makes another (so that a resubscription is always
   * one SUBSCRIBE per channel on a fresh connection, and `ready` follows it).
   */
  #makeSubscriber(): void {
    const connector = this.#connectors[this.#subscriberSeed++ % this.#connectors.length]!;
    const subscriber = createClient({
      ...this.#clientOptions(connector, false),
      socket: { ...connector.socket, reconnectStrategy: false },
    } as RedisClientOptions<{}, {}, {}, 2>) as unknown as Client;
    this.#subscriber = subscriber;
    this.#subscriberLive = false;
    subscriber.on('error', (error: unknown) => this.#dropSubscriber(subscriber, error));
    subscriber.on('end', () => this.#dropSubscriber(subscriber, new Error('connection closed')));
    void (async () => {
      await this.#withTimeout(subscriber.connect());
      // Channels added meanwhile are visited too: a Map's iteration includes entries added during it.
      for (const [channel, subscription] of this.#subscriptions) await this.#subscribeOn(subscriber, channel, subscription);
      if (this.#subscriber === subscriber) this.#subscriberLive = true;
    })().catch((error: unknown) => this.#dropSubscriber(subscriber, error));
  }

  async #subscribeOn(subscriber: Client, channel: string, subscription: Subscription): Promise<void> {
    await this.#withTimeout(subscriber.subscribe(channel, subscription.listener));
    if (this.#subscriber === subscriber && this.#subscriptions.get(channel) === subscription) this.#ready(subscription);
  }

  /** Throws the subscriber client away (once): its subscriptions are lost until the next one is made. */
  #dropSubscriber(subscriber: Client, error: unknown): void {
    if (this.#subscriber !== subscriber) return;
    this.#subscriber = undefined;
    this.#subscriberLive = false;
    if (!this.#closed) this.#log('subscriber', `tier: subscriber connection to ${this.url} lost: ${describe(error)}`);
    this.#lose();
    try {
      subscriber.destroy();
    } catch {
      // Already closed.
    }
  }

  #ready(subscription: Subscription): void {
    if (subscription.live) return;
    subscription.live = true;
    subscription.markFirstLive();
    this.#call(() => subscription.handlers.ready());
  }

  #lose(): void {
    for (const subscription of this.#subscriptions.values()) {
      if (!subscription.live) continue;
      subscription.live = false;
      this.#call(() => subscription.handlers.lost());
    }
  }

  #deliver(channel: string, message: string): void {
    const subscription = this.#subscriptions.get(channel);
    if (subscription !== undefined) this.#call(() => subscription.handlers.message(message));
  }

  /** Runs a handler; what it throws is logged, never left to crash the daemon from inside node-redis. */
  #call(handler: () => void): void {
    try {
      handler();
    } catch (error) {
      this.#errors++;
      this.#log('handler', `tier: a subscription handler failed: ${describe(error)}`);
    }
  }

  #pingSubscriber(subscriber: Client): Promise<void> {
    this.#subscriberPing ??= this.#withTimeout(subscriber.sendCommand(['PING']))
      .then(
        () => {},
        (error: unknown) => this.#dropSubscriber(subscriber, error instanceof TierUnavailable ? new Error(`PING ${error.message}`) : error),
      )
      .finally(() => (this.#subscriberPing = undefined));
    return this.#subscriberPing;
  }
}

function checkKey(key: string): void {
  if (typeof key !== 'string') throw new TypeError('A tier command needs its routing key.');
}

function clientFacade(client: Client): TierClient {
  const buffers = client.withTypeMapping(BUFFERS);
  return facade(
    <R>(key: string, args: readonly RedisArgument[], options?: TierCommandOptions) => {
      checkKey(key);
      return (options?.buffers === true ? buffers : client).sendCommand<R>(args);
    },
    async (key, section) => {
      checkKey(key);
      return { reply: client.sendCommand<string>(['INFO', section]).then(String) };
    },
  );
}

/** The Cluster's type-mapped view for `buffers`, made once per Cluster client. */
const buffersOf = new WeakMap<Cluster, Cluster>();

/**
 * The client over a Cluster; with `call`, each command with a routing key goes out only after its master is known:
 * refused at once when that master is marked down, and recorded in `call` while under way.
 */
function clusterFacade(cluster: Cluster, call?: ClusterCall): TierClient {
  let buffers = buffersOf.get(cluster);
  if (buffers === undefined) {
    buffers = cluster.withTypeMapping(BUFFERS) as unknown as Cluster;
    buffersOf.set(cluster, buffers);
  }
  const typed = buffers;
  const sendTo = <R>(key: string, args: readonly RedisArgument[], options?: TierCommandOptions): Promise<R> =>
    (options?.buffers === true ? typed : cluster).sendCommand<R>(key === '' ? undefined : key, false, [...args]);
  const queueInfo = async (key: string, section: string): Promise<{ reply: Promise<string> }> => {
    checkKey(key);
    const client = await cluster.getNodeClientForKey(key);
    return { reply: client.sendCommand<string>(['INFO', section]).then(String) };
  };
  if (call === undefined) {
    return facade(<R>(key: string, args: readonly RedisArgument[], options?: TierCommandOptions) => {
      checkKey(key);
      return sendTo<R>(key, args, options);
    }, queueInfo);
  }
  /**
   * Runs `work` for `key` once its master is known: refused at once when that master is marked down, and recorded in
   * `call` while under way (connecting to it included: a stopped master's connection never becomes ready).
   */
  const tracked = async <R>(key: string, work: () => Promise<R>, options: { answers: boolean }): Promise<R> => {
    checkKey(key);
    const address = key === '' ? undefined : masterOf(cluster, key);
    if (address === undefined) {
      // Slots known, but none of the masters serves this one (a Cluster short of coverage): as its master were down.
      if (key !== '' && cluster.masters.length > 0) throw new NodeDown(`no master of the tier serves slot ${keySlot(key)}`);
      return work();
    }
    call.check(address);
    call.sent.set(address, (call.sent.get(address) ?? 0) + 1);
    try {
      const reply = await work();
      if (options.answers) call.answered(address);
      return reply;
    } catch (error) {
      if (error instanceof ErrorReply) call.answered(address);
      throw error;
    } finally {
      const left = call.sent.get(address)! - 1;
      if (left === 0) call.sent.delete(address);
      else call.sent.set(address, left);
    }
  };
  return facade(
    <R>(key: string, args: readonly RedisArgument[], options?: TierCommandOptions) => tracked(key, () => sendTo<R>(key, args, options), { answers: true }),
    // Queued is not answered: a stopped master's connection, made before it stopped, takes commands all the same.
    (key, section) => tracked(key, () => queueInfo(key, section), { answers: false }),
  );
}

/**
 * The address (`host:port`) of the master that serves `key`'s slot now, as the Cluster client routes it (its slots
 * are rediscovered after a MOVED), found without connecting to it; `undefined` when it does not know yet (the client
 * is not ready: the command then fails alone).
 */
function masterOf(cluster: Cluster, key: string): string | undefined {
  return (cluster.slots[keySlot(key)] as { master?: { address?: string } } | undefined)?.master?.address;
}

/** CRC16 (XMODEM: polynomial 0x1021, initial value 0) by byte, as Redis Cluster hashes keys. */
const CRC16_TABLE = Uint16Array.from({ length: 256 }, (_, byte) => {
  let crc = byte << 8;
  for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1;
  return crc & 0xffff;
});

/**
 * The Cluster slot of `key`, as Redis computes it (`CLUSTER KEYSLOT`): of the part between the first `{` and the
 * first `}` after it when that part is not empty (a hash tag), of the whole key otherwise.
 */
export function keySlot(key: string): number {
  let bytes = Buffer.from(key);
  const open = bytes.indexOf(0x7b);
  if (open >= 0) {
    const close = bytes.indexOf(0x7d, open + 1);
    if (close > open + 1) bytes = bytes.subarray(open + 1, close);
  }
  let crc = 0;
  for (const byte of bytes) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ byte) & 0xff]!;
  return crc % 16384;
}

type Send = <R>(key: string, args: readonly RedisArgument[], options?: TierCommandOptions) => Promise<R>;

/**
 * The client over one `send`. A pipeline is its commands sent in one tick: node-redis writes them to the socket
 * together, in order, on the one connection of the key's node. (Not node-redis's `multi().execAsPipeline()`: on a
 * Cluster it ignores the type mapping, so values would come back as strings.)
 */
function facade(send: Send, queueInfo: TierClient['queueInfo']): TierClient {
  return {
    send,
    queueInfo,
    pipeline: (key, commands, options) => Promise.all(commands.map((args) => send(key, args, options))),
    script: (script, keys, args, options) => runScript(send, script, keys, args, options),
  };
}

async function runScript<R>(
  send: Send,
  script: TierScript,
  keys: readonly string[],
  args: readonly RedisArgument[],
  options?: TierCommandOptions,
): Promise<R> {
  const key = keys[0] ?? '';
  const rest = [String(keys.length), ...keys, ...args];
  try {
    return await send<R>(key, ['EVALSHA', script.sha1, ...rest], options);
  } catch (error) {
    if (!(error instanceof ErrorReply) || !error.message.startsWith('NOSCRIPT')) throw error;
    return send<R>(key, ['EVAL', script.source, ...rest], options);
  }
}
