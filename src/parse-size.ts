/** Bytes per unit: binary (`KiB` = 1024) and decimal (`KB` = 1000), as `du`, `df` and most tools mean them. */
const UNITS: Readonly<Record<string, number>> = Object.freeze({
  b: 1,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  tb: 1000 ** 4,
});

const SIZE = /^(\d+(?:\.\d+)?)\s*([a-z]+)?$/i;

/**
 * Reads a size as the command line writes it, `65536`, `512KiB`, `32MiB`, `10GiB`, `1TiB`, `500KB`, `1GB` (units in
 * any case), into whole bytes; `unlimited` is `Infinity` where `options.unlimited` allows it.
 * @throws TypeError for anything else, saying what is expected.
 */
export function parseSize(text: string, options: { unlimited?: boolean } = {}): number {
  const trimmed = text.trim();
  if (options.unlimited && trimmed.toLowerCase() === 'unlimited') return Infinity;
  const match = SIZE.exec(trimmed);
  const unit = match ? UNITS[(match[2] ?? 'b').toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    const examples = `65536, 512KiB, 32MiB, 10GiB or 1GB${options.unlimited ? ', or unlimited' : ''}`;
    throw new TypeError(`expected a size such as ${examples}, not ${JSON.stringify(text)}`);
  }
  return Math.round(Number(match[1]) * unit);
}
