import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { expect, onTestFinished, test } from 'vitest';
import {
  createProtocolConnection,
  DidChangeTextDocumentNotification,
  DidOpenTextDocumentNotification,
  ExitNotification,
  InitializedNotification,
  InitializeRequest,
  LogMessageNotification,
  type ProtocolConnection,
  PublishDiagnosticsNotification,
  type PublishDiagnosticsParams,
  RequestType,
  ShutdownRequest,
  StreamMessageReader,
  StreamMessageWriter,
  TextDocumentSyncKind,
} from 'vscode-languageserver-protocol/node';
import { connect } from '../client/index.js';
import { PROJECT_ROOT } from './support/child.js';
import { startDaemonProcess } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

const SERVER = join(PROJECT_ROOT, 'examples/language-server/server.js');

interface Analysis {
  lines: number;
  words: number;
  distinctWords: number;
  topWords: { word: string; count: number }[];
  repeatedWords: { word: string; range: { start: { line: number; character: number }; end: { line: number; character: number } } }[];
}
interface AnalysisResult {
  uri: string;
  version: number;
  sha256: string;
  computed: boolean;
  analysis: Analysis;
}
const AnalysisRequest = new RequestType<{ textDocument: { uri: string } }, AnalysisResult, void>('example/analysis');

interface LanguageServer {
  connection: ProtocolConnection;
  /** The `window/logMessage` lines it sent. */
  logs: string[];
  /** Its stderr lines. */
  stderr: string[];
  /** Errors of the client connection, such as bytes on stdout that are not LSP messages. */
  errors: unknown[];
  /** Resolves with the next diagnostics published for `uri` at `version`. */
  diagnostics(uri: string, version: number): Promise<PublishDiagnosticsParams>;
  exited: Promise<number | null>;
}

/** Starts `node server.js --stdio` with `env` and connects an LSP client to it; killed when the test ends. */
function startServer(env: Record<string, string>): LanguageServer {
  const child = spawn(process.execPath, [SERVER, '--stdio'], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  onTestFinished(() => void child.kill('SIGKILL'));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const stderr: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (line) => stderr.push(line));
  const connection = createProtocolConnection(new StreamMessageReader(child.stdout!), new StreamMessageWriter(child.stdin!));
  onTestFinished(() => connection.dispose());
  const errors: unknown[] = [];
  connection.onError(([error]) => void errors.push(error));
  const logs: string[] = [];
  connection.onNotification(LogMessageNotification.type, ({ message }) => void logs.push(message));
  const published: PublishDiagnosticsParams[] = [];
  const watchers: { match: (params: PublishDiagnosticsParams) => boolean; resolve: (params: PublishDiagnosticsParams) => void }[] = [];
  connection.onNotification(PublishDiagnosticsNotification.type, (params) => {
    published.push(params);
    for (const watcher of [...watchers]) {
      if (watcher.match(params)) {
        watchers.splice(watchers.indexOf(watcher), 1);
        watcher.resolve(params);
      }
    }
  });
  connection.listen();
  return {
    connection,
    logs,
    stderr,
    errors,
    exited,
    diagnostics: (uri, version) =>
      new Promise((resolve, reject) => {
        const match = (params: PublishDiagnosticsParams): boolean => params.uri === uri && params.version === version;
        const seen = published.find(match);
        if (seen) return resolve(seen);
        watchers.push({ match, resolve });
        void exited.then((code) => reject(new Error(`the server exited (${code}) before publishing diagnostics; stderr: ${stderr.join('\n')}`)));
      }),
  };
}

const computations = (server: LanguageServer): string[] => server.logs.filter((line) => line.startsWith('computed analysis '));

test('two language servers open the same document at once: the analysis is computed once, and both get it', { timeout: 60_000 }, async () => {
  const dir = await tempDir('hd-');
  const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data') });
  // HOARD_DATA_DIR too: should a server ever start a daemon of its own, it still stays out of the user's cache.
  const env = { HOARD_SOCKET: daemon.socketPath, HOARD_DATA_DIR: daemon.dataDir };
  const servers = [startServer(env), startServer(env)];

  const initialized = await Promise.all(
    servers.map((server) =>
      server.connection.sendRequest(InitializeRequest.type, { processId: process.pid, rootUri: null, capabilities: {}, initializationOptions: {} }),
    ),
  );
  for (const { capabilities } of initialized) expect(capabilities.textDocumentSync).toBe(TextDocumentSyncKind.Full);
  await Promise.all(servers.map((server) => server.connection.sendNotification(InitializedNotification.type, {})));

  const uri = 'file:///project/notes.txt';
  const text = 'The cache is shared.\nEvery server reads the the same entry,\nand the daemon keeps it.\n';
  // So that the two really contend, the test holds the item's lock until both servers wait for it; a server that
  // read and then wrote without holding the lock throughout would then compute too.
  const observer = await connect({ socketPath: daemon.socketPath, autoStart: false, clientName: 'language-server test' });
  onTestFinished(() => observer.close());
  const sha256 = createHash('sha256').update(text).digest('hex');
  const held = await observer.withScope('language-server').withScope('analysis').getset(sha256);
  let settled = false;
  const opening = Promise.all(
    servers.map(async (server) => {
      await server.connection.sendNotification(DidOpenTextDocumentNotification.type, {
        textDocument: { uri, languageId: 'plaintext', version: 1, text },
      });
      return server.connection.sendRequest(AnalysisRequest, { textDocument: { uri } });
    }),
  ).finally(() => (settled = true));
  while (!settled && (await observer.status()).waiters < 2) await new Promise((resolve) => setImmediate(resolve));
  await held.release();
  const [first, second] = await opening;
  // Exactly one of the two computed it; the other read it from the cache, and both have the same analysis.
  expect([first.computed, second.computed].sort()).toEqual([false, true]);
  expect(servers.flatMap(computations)).toHaveLength(1);
  expect([first.sha256, second.sha256]).toEqual([sha256, sha256]);
  expect(second.analysis).toEqual(first.analysis);
  expect(first.analysis).toMatchObject({
    lines: 4,
    words: 16,
    distinctWords: 13,
    topWords: expect.arrayContaining([{ word: 'the', count: 4 }]),
    repeatedWords: [{ word: 'the', range: { start: { line: 1, character: 23 }, end: { line: 1, character: 26 } } }],
  });
  const published = await Promise.all(servers.map((server) => server.diagnostics(uri, 1)));
  for (const { diagnostics } of published) {
    expect(diagnostics).toEqual([expect.objectContaining({ message: '"the" is repeated', range: first.analysis.repeatedWords[0].range })]);
  }

  // The same edit in both: the new text is computed once more, again by one of them.
  const edited = text.replace('the the', 'the');
  const [firstEdit, secondEdit] = await Promise.all(
    servers.map(async (server) => {
      await server.connection.sendNotification(DidChangeTextDocumentNotification.type, {
        textDocument: { uri, version: 2 },
        contentChanges: [{ text: edited }],
      });
      return server.connection.sendRequest(AnalysisRequest, { textDocument: { uri } });
    }),
  );
  expect([firstEdit.computed, secondEdit.computed].sort()).toEqual([false, true]);
  expect(servers.flatMap(computations)).toHaveLength(2);
  expect(secondEdit.analysis).toEqual(firstEdit.analysis);
  expect(firstEdit.analysis).toMatchObject({ words: 15, repeatedWords: [] });
  expect(firstEdit.version).toBe(2);
  for (const server of servers) expect((await server.diagnostics(uri, 2)).diagnostics).toEqual([]);

  // Both shut down cleanly: they close their cache connections and exit 0, leaving no lock behind.
  await Promise.all(
    servers.map(async (server) => {
      await server.connection.sendRequest(ShutdownRequest.type);
      await server.connection.sendNotification(ExitNotification.type);
      expect(await server.exited).toBe(0);
    }),
  );
  for (const server of servers) {
    expect(server.errors).toEqual([]);
    expect(server.stderr).toEqual([]);
  }
  // The daemon forgets a connection a moment after its socket closes: wait for that, then nothing may be left.
  while ((await observer.status()).connections > 1) await new Promise((resolve) => setImmediate(resolve));
  expect(await observer.status()).toMatchObject({ connections: 1, locksHeld: 0, waiters: 0 });
});
