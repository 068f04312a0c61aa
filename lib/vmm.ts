import { readFile } from 'node:fs/promises';
import { resolve as resolvePath } from 'node:path';
import createDebug from 'debug';

import { native } from './binding';
import type { NativeEngine, NativeEvent } from './binding';
import { VMMError, invalidType, outOfRange } from './errors';
import { Image } from './image';
import { resolveCreateVMOptions, resolveVMMOptions } from './options';
import type { CreateVMOptions, ResolvedVMMOptions, VMMOptions } from './options';
import { Snapshot } from './snapshot';
import { VM } from './vm';
import type { VMHost } from './vm';

/** Totals of one VMM, from {@link VMM.stats}. */
export interface VMMStats {
  /** VMs created and not destroyed. */
  vms: number;
  created: number;
  /** Running or queued for a worker. */
  running: number;
  /** Blocked in a wait hypercall with a KVM context; they hold no thread. */
  waiting: number;
  /** Waiting without a KVM context: state in the page store. */
  hibernated: number;
  exited: number;
  /** KVM contexts kept for reuse by the next VM that starts. */
  pooledContexts: number;
  /** KVM contexts alive in the process (held by VMs and pools). */
  residentContexts: number;
  /** The context cap in force (the `maxResident` option or its default). */
  maxResident: number;
  /** Most KVM contexts alive at once so far. */
  maxResidentReached: number;
  /** Bytes hibernated VMs take in the page store, shared pages counted once. */
  pageStoreBytes: number;
  hibernations: number;
  wakes: number;
  /**
   * Wake latency histogram: entry i counts wakes that took less than 2^i
   * microseconds (the last entry, anything longer), measured from the
   * worker taking the VM to its KVM context being ready.
   */
  wakeHistogram: number[];
  /** Resident guest pages only one VM holds, summed over the VMs. */
  privateBytes: number;
  /** Resident guest pages shared with images and snapshots, summed over the VMs. */
  sharedBytes: number;
}

const log = createDebug('vmm');
const logEngine = createDebug('vmm:engine');
const logImage = createDebug('vmm:image');

/**
 * The engine: owns a pool of native worker threads and every VM created
 * through it. A process may have several.
 *
 * The VMM keeps Node's event loop alive while one of its VMs has started
 * and not ended, the way a listening server does; {@link VMM.close} or
 * destroying the VMs lets the process exit. A started VM also stays alive
 * without a reference from the caller, like a child process, until it exits
 * or is destroyed. A VM that was never started or has exited is freed by
 * garbage collection, native record included.
 *
 * @example
 * ```ts
 * import { VMM, bundledGuest } from 'node-vmm';
 *
 * const vmm = new VMM();
 * const image = await vmm.loadImage(bundledGuest('counter'));
 * const vm = vmm.createVM({ image, memory: '16M' });
 * await vm.start();
 * console.log(new TextDecoder().decode(await vm.call('hi')));
 * await vmm.close();
 * ```
 */
export class VMM {
  /**
   * Options in force, with defaults filled in. `maxResident` stays 0 when the
   * engine picks the cap; `stats().maxResident` gives the cap in force.
   */
  readonly options: Readonly<ResolvedVMMOptions>;
  #engine: NativeEngine | undefined;
  readonly #vms = new Map<number, WeakRef<VM>>();
  readonly #alive = new Set<number>();
  readonly #held = new Map<number, VM>();
  readonly #snapshotWaiters = new Map<number, { resolve(snapshot: Snapshot): void; reject(err: Error): void }>();
  readonly #prewarmWaiters = new Map<number, { resolve(): void; reject(err: Error): void }>();
  readonly #finalizer: FinalizationRegistry<number>;
  readonly #host: VMHost;
  #nextCall = 1;

  /**
   * Opens /dev/kvm and starts the worker threads.
   *
   * @throws TypeError or RangeError for invalid options
   * @throws VMMError `ERR_KVM_UNAVAILABLE` (no /dev/kvm or KVM module),
   *   `ERR_KVM_PERMISSION` (no read and write access; join the kvm group),
   *   `ERR_KVM_CAPABILITY` (the host lacks a KVM feature the engine needs)
   */
  constructor(options?: VMMOptions) {
    this.options = Object.freeze(resolveVMMOptions(options));
    try {
      this.#engine = new native.NativeEngine(this.options, (events) => this.#dispatch(events));
    } catch (err) {
      throw VMMError.fromNative(err);
    }
    // A VM object collected without destroy() (never started, or exited:
    // running VMs are held) frees its native record; its KVM context and
    // memory went back when it exited.
    this.#finalizer = new FinalizationRegistry((id) => {
      log('VM %d collected without destroy()', id);
      this.#vms.delete(id);
      this.#setAliveId(id, false);
      this.#engine?.destroy(id);
    });
    this.#host = {
      engine: () => this.#requireEngine(),
      nextCallId: () => this.#nextCall++,
      registerSnapshot: (id, waiter) => this.#snapshotWaiters.set(id, waiter),
      setAlive: (vm, alive) => this.#setAliveId(vm.id, alive),
      hold: (vm, held) => {
        if (held) this.#held.set(vm.id, vm);
        else this.#held.delete(vm.id);
      },
      release: (vm) => this.#engine?.destroy(vm.id),
      forget: (vm) => {
        this.#vms.delete(vm.id);
        this.#finalizer.unregister(vm);
      },
    };
    log('started with %d workers', this.options.workers);
  }

  /** True after {@link VMM.close}. */
  get closed(): boolean {
    return this.#engine === undefined;
  }

  /** Number of VMs created and not yet destroyed or collected. */
  get size(): number {
    return this.#vms.size;
  }

  /**
   * Reads and validates a guest ELF image.
   *
   * @param path - a 64-bit x86-64 static ELF executable built for the guest ABI
   * @returns the validated image, ready for {@link VMM.createVM}
   * @throws VMMError `ERR_IMAGE_READ` when the file cannot be read,
   *   `ERR_IMAGE_INVALID` with the reason when it is not a valid guest image
   * @example
   * ```ts
   * const image = await vmm.loadImage('./my-guest.elf');
   * ```
   */
  async loadImage(path: string): Promise<Image> {
    if (typeof path !== 'string' || path.length === 0) {
      throw invalidType('path', 'a non-empty string', path, 'argument');
    }
    this.#requireEngine();
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new VMMError('ERR_IMAGE_READ', `failed to read guest image ${path}: ${e.message}`, {
        errno: typeof e.errno === 'number' ? -e.errno : undefined,
        syscall: e.syscall,
      });
    }
    try {
      const image = new Image(path, new native.NativeImage(bytes));
      logImage('loaded %s: entry 0x%s, %d bytes', path, image.entry.toString(16), bytes.length);
      return image;
    } catch (err) {
      const wrapped = VMMError.fromNative(err);
      if (wrapped instanceof VMMError) {
        throw new VMMError(wrapped.code, `${path}: ${wrapped.message}`);
      }
      throw wrapped;
    }
  }

  /**
   * Reads and verifies a snapshot file written by {@link Snapshot.save}. A
   * full snapshot's memory is mapped from the file itself, so clones in every
   * process share its page cache; treat the file as read-only while it is
   * loaded. A diff snapshot needs its parent, already loaded.
   *
   * @param file - path of the snapshot file
   * @param options - `parent`: the snapshot a diff file was taken against
   * @returns the snapshot, ready for `vmm.createVM({ snapshot })`
   * @throws VMMError `ERR_SNAPSHOT_INVALID` (truncated or corrupted file,
   *   format version other than 2, CPU features this host lacks, missing or
   *   wrong parent; nothing is loaded), `ERR_SNAPSHOT_READ`; for a diff,
   *   `ERR_OUT_OF_MEMORY` or `ERR_RESOURCE_LIMIT` while its memory is built
   * @example
   * ```ts
   * const base = await vmm.loadSnapshot('base.snap');
   * const child = await vmm.loadSnapshot('child.snap', { parent: base });
   * ```
   */
  async loadSnapshot(file: string, options: { parent?: Snapshot } = {}): Promise<Snapshot> {
    if (typeof file !== 'string' || file.length === 0) throw invalidType('path', 'a non-empty string', file, 'argument');
    if (options === null || typeof options !== 'object') throw invalidType('options', 'an object', options);
    if (options.parent !== undefined && !(options.parent instanceof Snapshot)) {
      throw invalidType('parent', 'a Snapshot', options.parent);
    }
    this.#requireEngine();
    try {
      return new Snapshot(await native.loadSnapshot(resolvePath(file), options.parent?.native ?? null));
    } catch (err) {
      throw VMMError.fromNative(err);
    }
  }

  /**
   * Creates a VM from an image, or a clone from a snapshot. Nothing touches
   * KVM until {@link VM.start}. A clone continues exactly where the
   * snapshotted VM stood, with a new VM id and random seed.
   *
   * @throws TypeError or RangeError naming the invalid option
   * @throws VMMError `ERR_VMM_CLOSED`
   * @example
   * ```ts
   * const vm = vmm.createVM({ image, memory: '32M', cmdline: 'verbose' });
   * const clone = vmm.createVM({ snapshot: await vm.snapshot() });
   * ```
   */
  createVM(options: CreateVMOptions): VM {
    const resolved = resolveCreateVMOptions(
      options,
      (value): value is Image => value instanceof Image,
      (value): value is Snapshot => value instanceof Snapshot,
    );
    const engine = this.#requireEngine();
    let id: number;
    try {
      id =
        'snapshot' in resolved
          ? engine.createClone(resolved.snapshot.native)
          : engine.create(resolved.image.native, resolved.memory, resolved.cmdline);
    } catch (err) {
      throw VMMError.fromNative(err);
    }
    const memory = 'snapshot' in resolved ? resolved.snapshot.memory : resolved.memory;
    const vm = new VM(id, this.#host, memory);
    this.#vms.set(id, new WeakRef(vm));
    this.#finalizer.register(vm, id, vm);
    return vm;
  }

  /**
   * Builds KVM contexts ready for clones of `snapshot` and keeps them in the
   * pool, so that the next `count` clones start without creating a KVM VM
   * (about 1 ms each). The work runs on the worker threads between VMs.
   *
   * @param count - contexts to build, 0 to 100,000
   * @returns a Promise that resolves when all are pooled
   * @throws TypeError or RangeError for bad arguments; rejects with VMMError
   *   `ERR_KVM_CREATE`, `ERR_RESOURCE_LIMIT` or `ERR_OUT_OF_MEMORY`
   * @example
   * ```ts
   * await vmm.prewarm(snapshot, 100);
   * const clone = vmm.createVM({ snapshot }); // starts in a pooled context
   * ```
   */
  prewarm(snapshot: Snapshot, count: number): Promise<void> {
    if (!(snapshot instanceof Snapshot)) {
      return Promise.reject(invalidType('snapshot', 'a Snapshot', snapshot, 'argument'));
    }
    if (typeof count !== 'number') return Promise.reject(invalidType('count', 'a number', count, 'argument'));
    if (!Number.isInteger(count) || count < 0 || count > 100000) {
      return Promise.reject(outOfRange('count', 'an integer from 0 to 100000', count, 'argument'));
    }
    let engine: NativeEngine;
    try {
      engine = this.#requireEngine();
    } catch (err) {
      return Promise.reject(err);
    }
    const request = this.#nextCall++;
    return new Promise((resolve, reject) => {
      const before = this.#alive.size + this.#prewarmWaiters.size;
      this.#prewarmWaiters.set(request, { resolve, reject });
      try {
        engine.prewarm(snapshot.native, count, request);
      } catch (err) {
        this.#prewarmWaiters.delete(request);
        reject(VMMError.fromNative(err));
        return;
      }
      this.#updateRef(before);
    });
  }

  /**
   * Counts VMs per state and totals the guest memory they hold.
   *
   * @throws VMMError `ERR_VMM_CLOSED`
   */
  stats(): VMMStats {
    return this.#requireEngine().engineStats();
  }

  /**
   * Destroys every VM and stops the worker threads. Idempotent.
   */
  async close(): Promise<void> {
    const engine = this.#engine;
    if (!engine) return;
    for (const ref of [...this.#vms.values()]) ref.deref()?.destroy();
    this.#vms.clear();
    this.#alive.clear();
    this.#held.clear();
    const snapshotError = new VMMError('ERR_VMM_CLOSED', 'the VMM was closed before the snapshot finished');
    for (const waiter of this.#snapshotWaiters.values()) waiter.reject(snapshotError);
    this.#snapshotWaiters.clear();
    const prewarmError = new VMMError('ERR_VMM_CLOSED', 'the VMM was closed before prewarm() finished');
    for (const waiter of this.#prewarmWaiters.values()) waiter.reject(prewarmError);
    this.#prewarmWaiters.clear();
    this.#engine = undefined;
    engine.shutdown();
    log('closed');
  }

  #requireEngine(): NativeEngine {
    if (!this.#engine) throw new VMMError('ERR_VMM_CLOSED', 'the VMM is closed: create a new VMM');
    return this.#engine;
  }

  #setAliveId(id: number, alive: boolean): void {
    const before = this.#alive.size + this.#prewarmWaiters.size;
    if (alive) this.#alive.add(id);
    else this.#alive.delete(id);
    this.#updateRef(before);
  }

  /** Refs the event loop while a VM runs or a prewarm is pending, as a server would. */
  #updateRef(before: number): void {
    const engine = this.#engine;
    if (!engine) return;
    const after = this.#alive.size + this.#prewarmWaiters.size;
    if (before === 0 && after > 0) engine.ref();
    if (before > 0 && after === 0) engine.unref();
  }

  #dispatch(events: NativeEvent[]): void {
    for (const event of events) {
      if (event.type === 'exit') {
        logEngine('VM %d exit: %s', event.vm, event.exit.message);
      } else if (event.type === 'startFailed') {
        logEngine('VM %d start failed: %s', event.vm, event.error.message);
      }
      if (event.type === 'prewarmed' || event.type === 'prewarmFailed') {
        const waiter = this.#prewarmWaiters.get(event.request);
        const before = this.#alive.size + this.#prewarmWaiters.size;
        this.#prewarmWaiters.delete(event.request);
        this.#updateRef(before);
        if (event.type === 'prewarmed') waiter?.resolve();
        else waiter?.reject(VMMError.fromNative(event.error));
        continue;
      }
      if (event.type === 'snapshot' || event.type === 'snapshotFailed') {
        const waiter = this.#snapshotWaiters.get(event.request);
        this.#snapshotWaiters.delete(event.request);
        if (event.type === 'snapshot') waiter?.resolve(new Snapshot(event.snapshot));
        else waiter?.reject(VMMError.fromNative(event.error));
        continue;
      }
      const vm = this.#vms.get(event.vm)?.deref();
      if (!vm) continue;
      try {
        vm.handleEvent(event);
      } catch (err) {
        // A throwing 'console' or 'exit' listener must not stop the rest of
        // the batch; rethrow it on its own tick as EventEmitter would.
        process.nextTick(() => {
          throw err;
        });
      }
    }
  }
}
