// The native addon and the one declaration of its surface. Only this file
// loads it; everything else imports the types and `native` from here.
import * as path from 'node:path';

// Type-only imports: the public types document the objects the addon returns.
import type { VMStats } from './vm';
import type { VMMStats } from './vmm';

/** Error fields the addon sets on the errors it throws or reports in events. */
export interface NativeErrorFields {
  code: string;
  message: string;
  errno?: number;
  syscall?: string;
}

/** The end of a VM, as the engine reports it. Addresses are hex strings. */
export interface NativeExit {
  code: number;
  reason: 'exit' | 'crash' | 'fault' | 'killed';
  message: string;
  exitName?: string;
  vector?: number;
  errorCode?: number;
  rip?: string;
  cr2?: string;
  registers?: Record<string, string>;
}

export type NativeEvent =
  | { type: 'started'; vm: number }
  | { type: 'startFailed'; vm: number; error: NativeErrorFields }
  | { type: 'console'; vm: number; data: Buffer }
  | { type: 'reply'; vm: number; call: number; data: Buffer }
  | { type: 'callFailed'; vm: number; call: number; error: NativeErrorFields }
  | { type: 'exit'; vm: number; exit: NativeExit }
  | { type: 'snapshot'; vm: number; request: number; snapshot: NativeSnapshot }
  | { type: 'snapshotFailed'; vm: number; request: number; error: NativeErrorFields }
  | { type: 'prewarmed'; vm: number; request: number }
  | { type: 'prewarmFailed'; vm: number; request: number; error: NativeErrorFields };

export type NativeVMState = 'created' | 'starting' | 'running' | 'waiting' | 'hibernated' | 'exited' | 'destroyed';

export interface NativeImage {
  readonly entry: number;
  readonly loadEnd: number;
  layoutBytes(): number;
}

export interface NativeSnapshot {
  readonly ramSize: number;
  readonly memoryBytes: number;
  readonly diffBytes: number;
  readonly hasParent: boolean;
  hash(): string;
}

export interface NativeBalloonStats {
  targetBytes: number;
  actualBytes: number;
  reclaimedBytes: number;
  reportedFreeBytes: number;
  invalidFrames: number;
}

export interface NativeEngine {
  create(image: NativeImage, ramSize: number, cmdline: string): number;
  createClone(snapshot: NativeSnapshot): number;
  snapshot(vm: number, request: number): void;
  engineStats(): VMMStats;
  prewarm(snapshot: NativeSnapshot, count: number, request: number): void;
  setBalloon(vm: number, pages: number): void;
  balloonStats(vm: number): NativeBalloonStats;
  start(vm: number, callIds?: number[], payloads?: Uint8Array[]): void;
  call(vm: number, call: number, payload: Uint8Array): void;
  kill(vm: number): void;
  destroy(vm: number): void;
  stats(vm: number): VMStats;
  state(vm: number): NativeVMState;
  shutdown(): void;
  ref(): void;
  unref(): void;
}

export interface NativeConstants {
  abiVersion: number;
  ramMin: number;
  ramMax: number;
  ramAlign: number;
  cmdlineMax: number;
  messageMax: number;
  reservedEnd: number;
}

interface NativeModule {
  NativeImage: new (bytes: Uint8Array) => NativeImage;
  NativeSnapshot: abstract new () => NativeSnapshot;
  NativeEngine: new (
    options: { workers: number; sliceMs: number; poolSize: number; maxResident: number; idleMs: number },
    onEvents: (events: NativeEvent[]) => void,
  ) => NativeEngine;
  probe(): { maxMemslots: number; runMmapSize: number };
  saveSnapshot(snapshot: NativeSnapshot, path: string): Promise<void>;
  loadSnapshot(path: string, parent: NativeSnapshot | null): Promise<NativeSnapshot>;
  constants: NativeConstants;
  /** Pure engine functions for tests; nothing here touches /dev/kvm. */
  testing: {
    decodeExit(run: {
      reason: number;
      address?: number | bigint;
      data?: number | bigint;
      size?: number;
      isWrite?: boolean;
      count?: number;
      suberror?: number;
    }): { kind: string; reasonName: string; address: bigint; value: bigint; size: number; isWrite: boolean };
    exitReasons: Record<'MMIO' | 'IO' | 'HLT' | 'SHUTDOWN' | 'INTERNAL_ERROR' | 'FAIL_ENTRY' | 'INTR' | 'DEBUG' | 'SYSTEM_EVENT', number>;
  };
}

/** The package root: dist/lib/binding.js sits two levels below it. */
export const packageRoot = path.resolve(__dirname, '..', '..');

// node-gyp-build has no type declarations; it returns the loaded addon.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const nodeGypBuild = require('node-gyp-build') as (root: string) => unknown;

function loadAddon(): NativeModule {
  try {
    return nodeGypBuild(packageRoot) as NativeModule;
  } catch (err) {
    const message =
      `the node-vmm native addon is not built for this platform (${process.platform}-${process.arch}, ` +
      `Node ${process.version}): run 'npm rebuild node-vmm' (gcc, g++, make and python3 needed), ` +
      `or, where npm skipped install scripts, allow them for node-vmm first. Cause: ${(err as Error).message}`;
    throw Object.assign(new Error(message), { code: 'ERR_ADDON_MISSING' });
  }
}

export const native = loadAddon();
