/**
 * Reads a duration as the command line writes it, `500ms`, `30s`, `15m`, `1h`, or a plain number of seconds, and
 * resolves to milliseconds; `undefined` for anything else.
 */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!match) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? 's']!;
  return Math.round(Number(match[1]) * unit);
}
