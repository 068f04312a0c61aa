import * as fs from 'node:fs';
import * as path from 'node:path';

import { packageRoot } from './binding';

/** Directory of the bundled guest images. */
export const guestDir = path.join(packageRoot, 'prebuilds', 'guests');

/**
 * Absolute path of a bundled guest image, such as `hello` or `counter`.
 *
 * @throws RangeError when no bundled guest has that name
 * @example
 * ```ts
 * const image = await vmm.loadImage(bundledGuest('hello'));
 * ```
 */
export function bundledGuest(name: string): string {
  const file = path.join(guestDir, `${name}.elf`);
  if (!/^[a-z0-9-]+$/.test(name) || !fs.existsSync(file)) {
    const known = listGuests().map((g) => g.name).join(', ');
    const err = new RangeError(`no bundled guest named '${name}'; available: ${known || 'none (run npm run build:guests)'}`);
    (err as RangeError & { code: string }).code = 'ERR_OUT_OF_RANGE';
    throw err;
  }
  return file;
}

/** Every bundled guest image, sorted by name. */
export function listGuests(): Array<{ name: string; path: string }> {
  let entries: string[];
  try {
    entries = fs.readdirSync(guestDir);
  } catch {
    return [];
  }
  return entries
    .filter((file) => file.endsWith('.elf'))
    .sort()
    .map((file) => ({ name: file.slice(0, -4), path: path.join(guestDir, file) }));
}
