// Shared test helpers: the /dev/kvm gate and small utilities.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

import { VMM, bundledGuest } from '../lib/index.js';
import type { Image, VM, VMExit } from '../lib/index.js';

/** Why KVM tests cannot run here, or undefined when they can. */
export function kvmMissingReason(): string | undefined {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT'
      ? '/dev/kvm does not exist (no KVM module loaded)'
      : `/dev/kvm is not readable and writable by this user (${code})`;
  }
}

/** Skips the suite with a stated reason where /dev/kvm is unusable. */
export function requireKvm(context: Mocha.Context): void {
  const reason = kvmMissingReason();
  if (reason !== undefined && process.env.VMM_REQUIRE_KVM === '1') {
    // CI sets this: a run that skipped every VM test must not pass.
    throw new Error(`VMM_REQUIRE_KVM is set but ${reason}`);
  }
  if (reason !== undefined) {
    // Mocha prints skipped suites as pending; the reason goes with them.
    console.log(`      skipped: ${reason}`);
    context.skip();
  }
}

/** Loads a bundled guest image. */
export function loadGuest(vmm: VMM, name: string): Promise<Image> {
  return vmm.loadImage(bundledGuest(name));
}

/** Collects everything a VM prints on its console. */
export function captureConsole(vm: VM): { text: () => string } {
  let text = '';
  vm.on('console', (chunk) => {
    text += chunk;
  });
  return { text: () => text };
}

/** Number of open file descriptors of this process. */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** Resident set size of this process in bytes, from /proc/self/statm. */
export function rssBytes(): number {
  const pages = Number(fs.readFileSync('/proc/self/statm', 'utf8').split(' ')[1]);
  return pages * 4096;
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Decodes reply bytes as UTF-8 text. */
export function text(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}

/** Error fields the tests check: a Node-style or engine `code` and the message. */
export type CodedError = Error & { code?: string };

/** Returns the error `promise` rejects with, and fails the test if it resolves. */
export async function rejectionOf(promise: Promise<unknown>): Promise<CodedError> {
  try {
    await promise;
  } catch (err) {
    return err as CodedError;
  }
  throw new Error('expected the promise to reject, but it resolved');
}

/** Returns the error `fn` throws, and fails the test if it returns. */
export function errorOf(fn: () => unknown): CodedError {
  try {
    fn();
  } catch (err) {
    return err as CodedError;
  }
  throw new Error('expected the function to throw, but it returned');
}

/** How a promise settled within a time limit. */
export type Settlement<T> =
  | { status: 'resolved'; value: T }
  | { status: 'rejected'; error: CodedError }
  | { status: 'pending' };

/**
 * Waits at most `ms` milliseconds for `promise` to settle, so that a promise
 * that never settles fails its test fast instead of at the mocha timeout.
 */
export async function settleWithin<T>(promise: Promise<T>, ms: number): Promise<Settlement<T>> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Settlement<T>>((resolve) => {
    timer = setTimeout(() => resolve({ status: 'pending' }), ms);
  });
  const settled = promise.then(
    (value): Settlement<T> => ({ status: 'resolved', value }),
    (error): Settlement<T> => ({ status: 'rejected', error: error as CodedError }),
  );
  try {
    return await Promise.race([settled, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves once the VM's console output contains `needle`. Attach it before start(). */
export function consoleContains(vm: VM, needle: string): Promise<void> {
  return new Promise((resolve) => {
    let seen = '';
    const onConsole = (chunk: string): void => {
      seen += chunk;
      if (seen.includes(needle)) {
        vm.off('console', onConsole);
        resolve();
      }
    };
    vm.on('console', onConsole);
  });
}

let gcFunction: (() => void) | undefined;

/**
 * Runs a full garbage collection. Uses `global.gc` when node runs with
 * --expose-gc, and otherwise turns the V8 flag on at run time and takes `gc`
 * from a new context, because mocha starts node without the flag.
 */
export function collectGarbage(): void {
  if (gcFunction === undefined) {
    const exposed = (globalThis as { gc?: () => void }).gc;
    if (typeof exposed === 'function') {
      gcFunction = exposed;
    } else {
      setFlagsFromString('--expose-gc');
      gcFunction = runInNewContext('gc') as () => void;
    }
  }
  gcFunction();
}

/**
 * Proportional set size of this process in bytes, from
 * /proc/self/smaps_rollup, or undefined where the kernel lacks that file
 * (before Linux 4.14). A page mapped N times counts 1/N in each mapping, so
 * unlike RSS it counts a page shared by several guest mappings once.
 */
export function pssBytes(): number | undefined {
  let rollup: string;
  try {
    rollup = fs.readFileSync('/proc/self/smaps_rollup', 'utf8');
  } catch {
    return undefined;
  }
  const match = /^Pss:\s+(\d+) kB$/m.exec(rollup);
  return match ? Number(match[1]) * 1024 : undefined;
}

/** Starts a VM and resolves with its exit, for guests that end on their own. */
export async function runToExit(vm: VM): Promise<VMExit> {
  const exited = vm.wait();
  await vm.start();
  return exited;
}

/** The reply of the counter guest, as csrc/guest/guests/counter.c documents it. */
export interface CounterReply {
  id: number;
  count: number;
  payload?: string;
  error?: string;
}

/** Parses a reply of the counter guest. */
export function parseCounter(reply: Uint8Array): CounterReply {
  return JSON.parse(text(reply)) as CounterReply;
}

/** Creates an empty directory under os.tmpdir(). Remove it with removeTempDir(). */
export function makeTempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `node-vmm-${prefix}-`));
}

/** Removes a directory from makeTempDir() with everything in it. */
export function removeTempDir(dir: string | undefined): void {
  if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
}

/** Size of a guest page and of the snapshot file's header, in bytes. */
export const PAGE_SIZE = 4096;

/**
 * Byte offsets of the header fields of a snapshot file, from `struct Header`
 * in csrc/memory/snapshot_file.cc. Integers are little-endian.
 */
export const SnapshotHeader = {
  magic: 0,
  version: 8,
  ramSize: 16,
  flags: 24,
  parentHash: 32,
  contentHash: 64,
  stateOffset: 96,
  stateSize: 104,
  indexOffset: 112,
  indexCount: 120,
  dataOffset: 128,
  dataSize: 136,
  /** SHA-256 of the vCPU state section. */
  stateSha: 144,
  /** SHA-256 of the listed memory pages, in page index order. */
  dataSha: 208,
  abiVersion: 240,
  /** Eight u32 words of CPUID feature bits the snapshot's guest may use. */
  features: 248,
  /** Guest address of the message buffer of the wait the guest was blocked in. */
  waitBuffer: 296,
  /** Balloon target in 4 KiB pages. */
  balloonTarget: 320,
  balloonOffset: 328,
  /** Number of 16-byte runs in the balloon section. */
  balloonCount: 336,
  /** SHA-256 of the balloon section. */
  balloonSha: 344,
  /** SHA-256 of bytes [0, 4064) of the header. */
  headerSha: 4064,
} as const;

/** Where the sections of a snapshot file lie, read from its header. */
export interface SnapshotLayout {
  stateOffset: number;
  stateSize: number;
  indexOffset: number;
  /** Guest page numbers the file stores, in ascending order. */
  pages: number[];
  balloonTarget: number;
  balloonOffset: number;
  /** Runs of ballooned frames, as the balloon section stores them. */
  balloonRuns: Array<{ first: number; count: number }>;
  dataOffset: number;
  dataSize: number;
}

/** Reads the section offsets and the page index of a snapshot file's bytes. */
export function readSnapshotLayout(file: Buffer): SnapshotLayout {
  const u64 = (offset: number): number => Number(file.readBigUInt64LE(offset));
  const indexOffset = u64(SnapshotHeader.indexOffset);
  const pages: number[] = [];
  for (let i = 0; i < u64(SnapshotHeader.indexCount); i++) {
    pages.push(u64(indexOffset + i * 8));
  }
  const balloonOffset = u64(SnapshotHeader.balloonOffset);
  const balloonRuns: Array<{ first: number; count: number }> = [];
  for (let i = 0; i < u64(SnapshotHeader.balloonCount); i++) {
    balloonRuns.push({ first: u64(balloonOffset + i * 16), count: u64(balloonOffset + i * 16 + 8) });
  }
  return {
    stateOffset: u64(SnapshotHeader.stateOffset),
    stateSize: u64(SnapshotHeader.stateSize),
    indexOffset,
    pages,
    balloonTarget: u64(SnapshotHeader.balloonTarget),
    balloonOffset,
    balloonRuns,
    dataOffset: u64(SnapshotHeader.dataOffset),
    dataSize: u64(SnapshotHeader.dataSize),
  };
}

/**
 * Recomputes the balloon section checksum and then the header checksum of
 * snapshot file bytes in place, after an edit of the balloon section.
 */
export function resealSnapshotBalloon(file: Buffer): void {
  const offset = Number(file.readBigUInt64LE(SnapshotHeader.balloonOffset));
  const count = Number(file.readBigUInt64LE(SnapshotHeader.balloonCount));
  const digest = createHash('sha256')
    .update(file.subarray(offset, offset + count * 16))
    .digest();
  digest.copy(file, SnapshotHeader.balloonSha);
  resealSnapshotHeader(file);
}

/** Recomputes the header checksum of snapshot file bytes in place, after a header edit. */
export function resealSnapshotHeader(file: Buffer): void {
  const digest = createHash('sha256').update(file.subarray(0, SnapshotHeader.headerSha)).digest();
  digest.copy(file, SnapshotHeader.headerSha);
}
