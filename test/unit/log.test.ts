import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { LogFile } from '../../daemon/log-file.js';
import { LogLimiter } from '../../daemon/log-limiter.js';
import { LOG_LINE_MAX_CHARS, LOG_TEXT_MAX_CHARS, logText, oneLogLine } from '../../daemon/log-text.js';
import { tempDir } from '../support/temp-dir.js';

describe('log text', () => {
  test('a client\u2019s text is quoted with every line break, control and bidirectional override escaped', () => {
    expect(logText('tool\n2001-02-03T04:05:06.789Z hoard[1] stopped')).toBe('"tool\\n2001-02-03T04:05:06.789Z hoard[1] stopped"');
    expect(logText('a\r\tb\u0000\u001b[2J\u0085\u2028\u2029\u202e\u2066\u007f')).toBe(
      '"a\\r\\tb\\u0000\\u001b[2J\\u0085\\u2028\\u2029\\u202e\\u2066\\u007f"',
    );
    expect(logText('say "hi" \\n')).toBe('"say \\"hi\\" \\\\n"');
    expect(logText('caf\u00e9 \u{1f600} \ud800 \udc00')).toBe('"caf\u00e9 \u{1f600} \\ud800 \\udc00"');
  });

  test('a client\u2019s text is cut to 200 characters after escaping, saying how long it was', () => {
    expect(LOG_TEXT_MAX_CHARS).toBe(200);
    const long = logText('x'.repeat(1024 * 1024));
    expect(long).toBe(`"${'x'.repeat(200)}"\u2026 (1048576 characters)`);
    // Escapes count, and none is cut in half.
    const newlines = logText('\n'.repeat(150));
    expect(newlines).toBe(`"${'\\n'.repeat(100)}"\u2026 (150 characters)`);
    expect(logText('\u2028'.repeat(40))).toBe(`"${'\\u2028'.repeat(33)}"\u2026 (40 characters)`);
    expect(logText('y'.repeat(200))).toBe(`"${'y'.repeat(200)}"`);
  });

  test('a whole line is made one line and cut at 4096 characters', () => {
    expect(oneLogLine('internal error: Error: boom\n    at f (x.js:1:1)\r\u2028')).toBe('internal error: Error: boom\\n    at f (x.js:1:1)\\r\\u2028');
    // Backslashes and quotes of the daemon's own text (paths) stay as they are.
    expect(oneLogLine('listening on /tmp/a\\b "s"')).toBe('listening on /tmp/a\\b "s"');
    const cut = oneLogLine(`${'z'.repeat(10_000)}\nforged`);
    expect(cut).toBe(`${'z'.repeat(LOG_LINE_MAX_CHARS)}\u2026 (cut from 10007 characters)`);
    expect(oneLogLine('\n'.repeat(LOG_LINE_MAX_CHARS)).length).toBeLessThan(LOG_LINE_MAX_CHARS + 40);
  });
});

describe('LogLimiter', () => {
  test('lets 20 lines a window through, counts the rest in one line at the next window and at flush', () => {
    const written: string[] = [];
    let now = 0;
    const limiter = new LogLimiter({ write: (line) => written.push(line), now: () => now });
    for (let i = 0; i < 300; i++) limiter.log(`bad frame ${i}`);
    expect(written).toEqual(Array.from({ length: 20 }, (_, i) => `bad frame ${i}`));
    now = 59_999;
    limiter.log('still the first minute');
    expect(written).toHaveLength(20);
    now = 60_000;
    limiter.log('a new minute');
    expect(written.slice(20)).toEqual(['281 more lines suppressed (at most 20 every 60 s per connection)', 'a new minute']);
    limiter.flush();
    expect(written).toHaveLength(22);
    for (let i = 0; i < 20; i++) limiter.log('more');
    limiter.flush();
    expect(written.at(-1)).toBe('1 more line suppressed (at most 20 every 60 s per connection)');
  });
});

describe('LogFile', () => {
  test('writing 20 times its cap keeps the file under the cap, one old file beside it, the newest line last, both 0600', async () => {
    const dir = await tempDir('hl-');
    const path = join(dir, 'daemon.log');
    const file = new LogFile(path, { maxBytes: 4096 });
    let written = 0;
    for (let i = 0; written < 20 * 4096; i++) {
      const line = `line ${i} x${'.'.repeat(i % 90)}`;
      file.write(line);
      written += Buffer.byteLength(line) + 1;
      expect((await stat(path)).size).toBeLessThanOrEqual(4096);
      // What connect() reports when a daemon fails to start: the file's last line is the one just written.
      expect((await readFile(path, 'utf8')).trimEnd().split('\n').at(-1)).toBe(line);
    }
    const old = await readFile(`${path}.1`, 'utf8');
    expect(old.length).toBeGreaterThan(4096 - 100);
    expect(old.length).toBeLessThanOrEqual(4096);
    // Nothing is lost at a rotation: the old file ends where the new one begins.
    const [lastOld, firstNew] = [old.trimEnd().split('\n').at(-1)!, (await readFile(path, 'utf8')).split('\n')[0]!];
    expect(Number(firstNew.split(' ')[1])).toBe(Number(lastOld.split(' ')[1]) + 1);
    for (const each of [path, `${path}.1`]) expect((await stat(each)).mode & 0o777).toBe(0o600);
  });

  test('a line it cannot write is dropped without an exception', async () => {
    const dir = await tempDir('hl-');
    await writeFile(join(dir, 'not-a-dir'), '');
    expect(() => new LogFile(join(dir, 'not-a-dir', 'daemon.log')).write('lost')).not.toThrow();
  });
});
