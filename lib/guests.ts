import * as fs from 'node:fs';
import * as path from 'node:path';

import { packageRoot } from './binding';

/** Directory of the bundled guest images. */
export const guestDir = path.join(packageRoot, 'prebuilds', 'guests');

/**
 * Prefix of the guests built for the test suite and the benchmarks. They stay
 * loadable with bundledGuest() but are left out of listGuests().
 */
const INTERNAL_PREFIX = 'test-';

/** Descriptions of the user guests, taken from the comment atop each source in csrc/guest/guests. */
const DESCRIPTIONS: Record<string, string> = {
  hello: 'prints a greeting with its VM id and command line, then exits 0',
  counter: 'replies to each message with JSON: its VM id, the calls served and the message',
  echo: 'replies to each message with the message unchanged',
};

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

/**
 * Lists the bundled guest images meant for users, sorted by name. The
 * `test-*` guests of the test suite and benchmarks are left out.
 */
export function listGuests(): Array<{ name: string; path: string; description: string }> {
  let entries: string[];
  try {
    entries = fs.readdirSync(guestDir);
  } catch {
    return [];
  }
  return entries
    .filter((file) => file.endsWith('.elf') && !file.startsWith(INTERNAL_PREFIX))
    .sort()
    .map((file) => {
      const name = file.slice(0, -4);
      return { name, path: path.join(guestDir, file), description: DESCRIPTIONS[name] ?? '' };
    });
}
