/**
 * The boolean option `name` of a maintenance call's options object (`gc`'s `dryRun`, `verify`'s `fix`): `false` when
 * absent, so that nothing is removed or mended unless asked.
 * @throws TypeError when the options are not an object, or the option is present and not a boolean.
 */
export function flagOption(options: unknown, name: string, method: string): boolean {
  if (options === undefined) return false;
  if (typeof options !== 'object' || options === null) throw new TypeError(`${method} options must be an object, not ${options === null ? 'null' : typeof options}`);
  const value = (options as Record<string, unknown>)[name];
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw new TypeError(`${method}'s ${name} must be true or false, not ${value === null ? 'null' : `a ${typeof value}`}`);
  return value;
}
