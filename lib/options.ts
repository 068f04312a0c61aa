import * as os from 'node:os';

import { native } from './binding';
import { invalidType, outOfRange } from './errors';
import type { Image } from './image';
import type { Snapshot } from './snapshot';

const MiB = 1024 * 1024;

/** Options of {@link VMM}. */
export interface VMMOptions {
  /** Native worker threads that run vCPUs. Default: the CPU count. */
  workers?: number;
  /** Milliseconds a guest may run while other VMs are queued. Default: 10. */
  sliceMs?: number;
  /**
   * KVM contexts kept after their VMs end or hibernate, for the next VMs to
   * start or wake in without creating a KVM VM. Contexts above this count
   * are closed after one second unused, except prewarmed ones. 0 disables
   * reuse of ended VMs' contexts. Default: 32.
   */
  poolSize?: number;
  /**
   * KVM contexts held at most, by VMs and the pool. When a VM needs one past
   * the cap, the least recently active waiting VM hibernates. Default: 0,
   * which picks the smallest of 32 per worker thread, 256, a quarter of
   * available memory at 640 KiB each, and what the file descriptor limit
   * allows at two descriptors each.
   */
  maxResident?: number;
  /**
   * Milliseconds a VM waits for a message before it gives its KVM context
   * back and hibernates; 0 turns idle hibernation off. Default: 250.
   */
  idleMs?: number;
}

/**
 * Options of {@link VMM.createVM}: `image` to boot an image, or `snapshot`
 * to clone a snapshot (whose memory size and command line it keeps).
 */
export type CreateVMOptions = CreateFromImageOptions | CreateFromSnapshotOptions;

/** Options of a clone: the snapshot fixes memory and command line. */
export interface CreateFromSnapshotOptions {
  /** Snapshot returned by {@link VM.snapshot} or {@link VMM.loadSnapshot}. */
  snapshot: Snapshot;
}

/** Options of a VM booted from an image. */
export interface CreateFromImageOptions {
  /** Image returned by {@link VMM.loadImage}. */
  image: Image;
  /**
   * Guest RAM: bytes, or a string such as `'16M'`, `'64MiB'` or `'1G'`.
   * A multiple of 2 MiB between 4 MiB and 3 GiB. Default: 16 MiB.
   */
  memory?: number | string;
  /** Command line the guest reads from its boot information block. Default: ''. */
  cmdline?: string;
}

export interface ResolvedVMMOptions {
  workers: number;
  sliceMs: number;
  poolSize: number;
  maxResident: number;
  idleMs: number;
}

export type ResolvedCreateVMOptions = { image: Image; memory: number; cmdline: string } | { snapshot: Snapshot };

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  k: 1024,
  kib: 1024,
  m: MiB,
  mib: MiB,
  g: 1024 * MiB,
  gib: 1024 * MiB,
};

/**
 * Parses a byte size: a non-negative integer, or a string with an optional
 * binary unit (`K`, `M`, `G`, `KiB`, `MiB`, `GiB`; case-insensitive).
 *
 * @param name - option name used in error messages
 * @throws TypeError (`ERR_INVALID_ARG_TYPE`) for other types
 * @throws RangeError (`ERR_OUT_OF_RANGE`) for a malformed or negative size
 * @example parseSize('memory', '64M') // 67108864
 */
export function parseSize(name: string, value: unknown): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw outOfRange(name, 'a non-negative integer number of bytes', value);
    }
    return value;
  }
  if (typeof value !== 'string') {
    throw invalidType(name, 'a number of bytes or a size string such as "16M"', value);
  }
  const match = /^\s*(\d+)\s*([a-z]*)\s*$/i.exec(value);
  const unit = match ? SIZE_UNITS[match[2].toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw outOfRange(name, 'a size such as "16M", "64MiB" or "1G"', value);
  }
  const bytes = Number(match[1]) * unit;
  if (!Number.isSafeInteger(bytes)) {
    throw outOfRange(name, 'a size below 2^53 bytes', value);
  }
  return bytes;
}

function integerOption(name: string, value: unknown, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number') throw invalidType(name, 'a number', value);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw outOfRange(name, `an integer from ${min} to ${max}`, value);
  }
  return value;
}

const VMM_OPTION_NAMES = ['workers', 'sliceMs', 'poolSize', 'maxResident', 'idleMs'];
const CLONE_OPTION_NAMES = ['snapshot', 'image', 'memory', 'cmdline'];
const IMAGE_OPTION_NAMES = ['image', 'memory', 'cmdline'];

/** Throws for an option name outside `known`, so that a misspelt option is not silently ignored. */
function rejectUnknownOptions(options: object, known: readonly string[]): void {
  for (const name of Object.keys(options)) {
    if (!known.includes(name)) {
      const err = new TypeError(`The "${name}" option is not a known option. Known options: ${known.join(', ')}`);
      (err as TypeError & { code: string }).code = 'ERR_INVALID_ARG_VALUE';
      throw err;
    }
  }
}

/** Validates {@link VMMOptions} and fills in the defaults. */
export function resolveVMMOptions(options: unknown): ResolvedVMMOptions {
  if (options === undefined) options = {};
  if (options === null || typeof options !== 'object') {
    throw invalidType('options', 'an object', options);
  }
  rejectUnknownOptions(options, VMM_OPTION_NAMES);
  const input = options as VMMOptions;
  const cpus = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return {
    workers: integerOption('workers', input.workers, 1, 256, Math.max(1, cpus)),
    sliceMs: integerOption('sliceMs', input.sliceMs, 1, 60000, 10),
    poolSize: integerOption('poolSize', input.poolSize, 0, 100000, 32),
    maxResident: integerOption('maxResident', input.maxResident, 0, 100000, 0),
    idleMs: integerOption('idleMs', input.idleMs, 0, 86400000, 250),
  };
}

/** Validates {@link CreateVMOptions} and fills in the defaults. */
export function resolveCreateVMOptions(
  options: unknown,
  isImage: (value: unknown) => value is Image,
  isSnapshot: (value: unknown) => value is Snapshot,
): ResolvedCreateVMOptions {
  if (options === null || typeof options !== 'object') {
    throw invalidType('options', 'an object', options);
  }
  if ('snapshot' in options) {
    rejectUnknownOptions(options, CLONE_OPTION_NAMES);
    const clone = options as CreateFromSnapshotOptions & Partial<CreateFromImageOptions>;
    if (!isSnapshot(clone.snapshot)) {
      throw invalidType('snapshot', 'a Snapshot returned by vm.snapshot() or vmm.loadSnapshot()', clone.snapshot);
    }
    for (const key of ['image', 'memory', 'cmdline'] as const) {
      if (clone[key] !== undefined) {
        throw invalidType(key, 'undefined for a clone, which keeps the snapshot\'s value', clone[key]);
      }
    }
    return { snapshot: clone.snapshot };
  }
  rejectUnknownOptions(options, IMAGE_OPTION_NAMES);
  const input = options as CreateFromImageOptions;
  if (!isImage(input.image)) {
    throw invalidType('image', 'an Image returned by vmm.loadImage()', input.image);
  }
  const { ramMin, ramMax, ramAlign, cmdlineMax } = native.constants;
  const memory = input.memory === undefined ? 16 * MiB : parseSize('memory', input.memory);
  if (memory < ramMin || memory > ramMax || memory % ramAlign !== 0) {
    throw outOfRange('memory', `a multiple of 2 MiB from ${ramMin / MiB} MiB to ${ramMax / MiB} MiB`, input.memory);
  }
  if (memory < input.image.memoryNeeded) {
    throw outOfRange('memory', `at least ${Math.ceil(input.image.memoryNeeded / MiB)} MiB for this image`, input.memory);
  }
  const cmdline = input.cmdline ?? '';
  if (typeof cmdline !== 'string') throw invalidType('cmdline', 'a string', cmdline);
  if (Buffer.byteLength(cmdline) >= cmdlineMax) {
    throw outOfRange('cmdline', `shorter than ${cmdlineMax} bytes in UTF-8`, cmdline);
  }
  if (cmdline.includes('\0')) throw outOfRange('cmdline', 'a string without NUL characters', cmdline);
  return { image: input.image, memory, cmdline };
}
