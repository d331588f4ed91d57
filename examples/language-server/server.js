#!/usr/bin/env node
'use strict';

// A small language server that keeps an expensive per-document analysis in hoard, so that every server on the
// machine that opens the same text computes it once. Run it as `node server.js --stdio`; see README.md.
//
// In stdio mode stdout belongs to the LSP connection: this file never writes to it (vscode-languageserver also
// sends console.log to the client as log messages).

const { createHash } = require('node:crypto');
const { createRequire } = require('node:module');
const { join } = require('node:path');
const { createConnection, DiagnosticSeverity, RequestType, ResponseError, TextDocumentSyncKind } = require('vscode-languageserver/node');
const { connect } = requireHoardClient();

/**
 * `example/analysis`: the analysis of an open document's current text, and whether this server computed it
 * (`computed: true`) or read it from the cache. Params `{ textDocument: { uri } }`; result
 * `{ uri, version, sha256, computed, analysis }`. Fails with code 1 when the document is not open.
 */
const AnalysisRequest = new RequestType('example/analysis');
const DOCUMENT_NOT_OPEN = 1;

// Content-addressed: the id is the SHA-256 of the text, so equal texts share one entry whatever their URI.
// Give the scope a new name when the shape of `analyseText`'s result changes.
const SCOPE = ['language-server', 'analysis'];

const connection = createConnection();

/** uri -> { version, text, result: Promise<{ sha256, computed, analysis }> } for each open document. */
const documents = new Map();
/** How many analyses this process computed (instead of reading them from the cache). */
let computations = 0;
/** The daemon's `RemoteCache`, or null when it could not be reached (then every analysis is computed here). */
let remoteReady = Promise.resolve(null);

connection.onInitialize((params) => {
  const options = params.initializationOptions ?? {};
  // `connect` reads HOARD_SOCKET itself when no socketPath is given, and starts a daemon when none answers.
  const socketPath = typeof options.hoardSocket === 'string' ? options.hoardSocket : undefined;
  remoteReady = connect({ socketPath, clientName: `hoard-example-language-server ${process.pid}` }).catch((error) => {
    connection.console.error(`hoard is unavailable, analysing without a cache: ${error.message}`);
    return null;
  });
  return {
    capabilities: { textDocumentSync: TextDocumentSyncKind.Full },
    serverInfo: { name: 'hoard-example-language-server' },
  };
});

connection.onDidOpenTextDocument(({ textDocument }) => update(textDocument.uri, textDocument.version, textDocument.text));

connection.onDidChangeTextDocument(({ textDocument, contentChanges }) => {
  // Full sync (see the capabilities): the last change holds the whole new text.
  const last = contentChanges.at(-1);
  if (last) update(textDocument.uri, textDocument.version, last.text);
});

connection.onDidCloseTextDocument(({ textDocument }) => {
  documents.delete(textDocument.uri);
  void connection.sendDiagnostics({ uri: textDocument.uri, diagnostics: [] });
});

connection.onRequest(AnalysisRequest, async ({ textDocument }) => {
  const document = documents.get(textDocument.uri);
  if (!document) throw new ResponseError(DOCUMENT_NOT_OPEN, `Document not open: ${textDocument.uri}`);
  const { sha256, computed, analysis } = await document.result;
  return { uri: textDocument.uri, version: document.version, sha256, computed, analysis };
});

connection.onShutdown(async () => {
  // Let running analyses finish (and release their locks), then hang up on the daemon. On `exit` without
  // `shutdown` the process just ends: the daemon releases whatever a vanished client held.
  await Promise.allSettled([...documents.values()].map((document) => document.result));
  const remote = await remoteReady;
  await remote?.close();
  connection.console.info(`shut down after ${computations} computation(s)`);
});

connection.listen();

/** Starts analysing a document's new text, and publishes diagnostics once done if the text is still current. */
function update(uri, version, text) {
  const result = analyse(text);
  const document = { version, text, result };
  documents.set(uri, document);
  result.then(
    ({ analysis }) => {
      if (documents.get(uri) === document) void connection.sendDiagnostics({ uri, version, diagnostics: diagnosticsOf(analysis) });
    },
    (error) => connection.console.error(`analysing ${uri} failed: ${error.message}`),
  );
}

/**
 * The analysis of `text`, from the cache or computed here. Under the item's exclusive lock (`getset`), so that of
 * several servers opening the same text at once, one computes and the others wait and then read its result.
 */
async function analyse(text) {
  const sha256 = createHash('sha256').update(text).digest('hex');
  const remote = await remoteReady;
  if (!remote) return { sha256, computed: true, analysis: computeAnalysis(text, sha256) };
  const cache = SCOPE.reduce((scope, name) => scope.withScope(name), remote);
  const handle = await cache.getset(sha256);
  try {
    if (handle.item) return { sha256, computed: false, analysis: await handle.item.value() };
    const analysis = computeAnalysis(text, sha256);
    await handle.set(analysis);
    return { sha256, computed: true, analysis };
  } finally {
    // Plain JavaScript on Node 20 has no `await using`; release in `finally` so the lock never outlives an error.
    await handle.release();
  }
}

/** Runs the expensive analysis, counting and logging it: one log line per computation. */
function computeAnalysis(text, sha256) {
  const analysis = analyseText(text);
  computations += 1;
  connection.console.info(`computed analysis ${sha256} (computation ${computations} in this process)`);
  return analysis;
}

/**
 * The expensive part, deterministic from the text (a stand-in for parsing or type checking): line and word
 * counts, the ten most frequent words, and words written twice in a row ("the the"), with their LSP ranges.
 */
function analyseText(text) {
  const lineStarts = [0];
  for (let i = 0; i < text.length; i++) if (text[i] === '\n') lineStarts.push(i + 1);
  const positionAt = (offset) => {
    let low = 0;
    let high = lineStarts.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (lineStarts[middle] <= offset) low = middle;
      else high = middle - 1;
    }
    // LSP characters are UTF-16 code units, as JavaScript string offsets are.
    return { line: low, character: offset - lineStarts[low] };
  };

  const counts = new Map();
  const repeatedWords = [];
  let words = 0;
  let previous = null;
  for (const match of text.matchAll(/[\p{L}\p{N}]+(?:['\u2019][\p{L}\p{N}]+)*/gu)) {
    const word = match[0].toLowerCase();
    const start = match.index;
    const end = start + match[0].length;
    words += 1;
    counts.set(word, (counts.get(word) ?? 0) + 1);
    // Only whitespace between the two: "that. That" is not a repetition.
    if (previous && previous.word === word && /^\s+$/.test(text.slice(previous.end, start))) {
      repeatedWords.push({ word, range: { start: positionAt(start), end: positionAt(end) } });
    }
    previous = { word, end };
  }
  const topWords = [...counts]
    .sort(([a, countA], [b, countB]) => countB - countA || (a < b ? -1 : a > b ? 1 : 0))
    .slice(0, 10)
    .map(([word, count]) => ({ word, count }));
  return { lines: lineStarts.length, words, distinctWords: counts.size, topWords, repeatedWords };
}

function diagnosticsOf(analysis) {
  return analysis.repeatedWords.map(({ word, range }) => ({
    range,
    severity: DiagnosticSeverity.Warning,
    source: 'hoard-example',
    message: `"${word}" is repeated`,
  }));
}

/**
 * `require('hoard-cache/client')`: from node_modules once this example's dependencies are installed, else — run in
 * place in a hoard checkout — from that checkout by Node's package self-reference. (This folder's own package.json
 * is the nearest one, so self-reference from here would look for a package named hoard-example-language-server.)
 */
function requireHoardClient() {
  try {
    return require('hoard-cache/client');
  } catch (error) {
    if (error.code !== 'MODULE_NOT_FOUND' || !/'hoard-cache\/client'/.test(error.message)) throw error;
    return createRequire(join(__dirname, '..', '..', 'package.json'))('hoard-cache/client');
  }
}
