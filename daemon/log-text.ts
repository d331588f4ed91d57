/** The most characters of a client's text (its name, say) that a log line quotes, counted after escaping. */
export const LOG_TEXT_MAX_CHARS = 200;

/** The longest log line, in characters, after escaping; the rest of a longer one (a long stack) is cut. */
export const LOG_LINE_MAX_CHARS = 4096;

/**
 * What must never reach the log as it is: C0 and C1 controls (line feeds, carriage returns, terminal escapes), DEL,
 * the Unicode line and paragraph separators, the bidirectional overrides that make text read other than it is
 * stored, and lone surrogates (which UTF-8 cannot carry).
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

const UNSAFE_CHAR = new RegExp(UNSAFE.source);

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t', '"': '\\"', '\\': '\\\\' };

function escape(char: string): string {
  return NAMED[char] ?? `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`;
}

/**
 * Makes `line` one line of the log: every character in {@link UNSAFE} is written as an escape (`\n`, `\u2028`),
 * and a line longer than {@link LOG_LINE_MAX_CHARS} is cut, saying how much was left out.
 */
export function oneLogLine(line: string): string {
  const escaped = line.slice(0, LOG_LINE_MAX_CHARS).replace(UNSAFE, escape);
  if (escaped.length <= LOG_LINE_MAX_CHARS && line.length <= LOG_LINE_MAX_CHARS) return escaped;
  return `${escaped.slice(0, LOG_LINE_MAX_CHARS)}\u2026 (cut from ${line.length} characters)`;
}

/**
 * Quotes text that a client chose (a name, a value echoed in an error) for a log line: in double quotes, with
 * quotes, backslashes and every unsafe character escaped, and cut to `maxChars` (after escaping), saying how long
 * it was, so that no client can make a line longer, or start a line of its own.
 */
export function logText(text: string, maxChars = LOG_TEXT_MAX_CHARS): string {
  let quoted = '';
  let at = 0;
  for (const char of text.slice(0, maxChars + 1)) {
    const piece = UNSAFE_CHAR.test(char) || char === '"' || char === '\\' ? escape(char) : char;
    if (quoted.length + piece.length > maxChars) break;
    quoted += piece;
    at += char.length;
  }
  return at < text.length ? `"${quoted}"\u2026 (${text.length} characters)` : `"${quoted}"`;
}
