import { EventEmitter } from 'node:events';
import { TextDecoder } from 'node:util';

import type { NativeEngine, NativeExit, NativeVMState } from './binding';
import { VMMError, invalidType, outOfRange } from './errors';
import { Snapshot } from './snapshot';

/** Lifecycle state of a VM. `running` includes waiting for a free worker. */
export type VMState = NativeVMState;

/**
 * The end of a VM. `reason` is `exit` (the guest exited with `code`), `crash`
 * (an exception, triple fault or KVM error; `detail` carries the vector, rip,
 * cr2 and registers), `fault` (the guest passed the VMM an invalid address
 * where no error could be returned) or `killed` (by {@link VM.kill},
 * {@link VM.destroy} or {@link VMM.close}). `code` is -1 unless the guest
 * exited.
 */
export interface VMExit {
  code: number;
  reason: 'exit' | 'crash' | 'fault' | 'killed';
  detail: NativeExit;
}

/** Counters of one VM, from {@link VM.stats}. */
export interface VMStats {
  state: VMState;
  /** KVM_RUN returns, including hypercalls. */
  exits: number;
  hypercalls: number;
  /** Hypercalls that returned an error to the guest (such as a bad pointer). */
  hypercallErrors: number;
  /** Messages sent with {@link VM.call}. */
  calls: number;
  replies: number;
  /** Nanoseconds spent on a worker thread. */
  runNs: number;
  /** Console bytes the guest wrote that were kept. */
  consoleBytes: number;
  /** Console bytes dropped because the per-VM buffer (64 KiB) was full. */
  consoleDroppedBytes: number;
  /** Resident guest pages only this VM holds, in bytes. */
  privateBytes: number;
  /** Resident guest pages shared with the image, in bytes. */
  sharedBytes: number;
  /** Guest RAM size in bytes. */
  memoryBytes: number;
}

/** Guest memory a VM holds on the host, from {@link VM.memoryStats}. */
export interface VMMemoryStats {
  /**
   * Resident pages private to this VM (pages it wrote), in bytes. For a
   * hibernated VM, its record in the page store instead, without the pages
   * that the store keeps once for many VMs.
   */
  privateBytes: number;
  /** Resident pages shared with its image or snapshot, in bytes; 0 while hibernated. */
  sharedBytes: number;
}

/** Balloon figures of one VM, from {@link VM.balloonStats}. */
export interface VMBalloonStats {
  /** Bytes the host asked the guest to hand back. */
  target: number;
  /** Bytes the guest has handed back (pages in the balloon), at most guest RAM. */
  actual: number;
  /** Private host memory freed by the balloon and by free page reports, in bytes. */
  reclaimed: number;
  /** Bytes the guest reported free on its own (free page reporting). */
  reportedFree: number;
  /** Frames the guest reported outside guest RAM or in the reserved area, ignored. */
  invalidFrames: number;
}

/** Events of {@link VM}. */
export interface VMEvents {
  /** Console text written by the guest, decoded as UTF-8. */
  console: [text: string];
  /** The VM ended. Emitted once. */
  exit: [exit: VMExit];
}

interface PendingCall {
  resolve(reply: Uint8Array): void;
  reject(err: Error): void;
}

/** Hooks from a VM back to its VMM. @internal */
export interface VMHost {
  engine(): NativeEngine;
  nextCallId(): number;
  /** Resolves snapshot request `id` from the engine's events. */
  registerSnapshot(id: number, waiter: { resolve(snapshot: Snapshot): void; reject(err: Error): void }): void;
  setAlive(vm: VM, alive: boolean): void;
  /**
   * Keeps the VM reachable from its VMM while it runs (started, not ended)
   * or has a pending Promise. Like a child process, a started VM goes on
   * until it exits or is destroyed, whether or not the caller keeps a
   * reference, because collecting it would drop its events and pending calls.
   */
  hold(vm: VM, held: boolean): void;
  /** Destroys the native VM; does nothing once the VMM is closed. */
  release(vm: VM): void;
  forget(vm: VM): void;
}

const encoder = new TextEncoder();

/**
 * One hardware-isolated virtual machine. Create it with
 * {@link VMM.createVM}, then {@link VM.start} it.
 *
 * @example
 * ```ts
 * const vm = vmm.createVM({ image, memory: '16M' });
 * vm.on('console', (text) => process.stdout.write(text));
 * await vm.start();
 * const reply = await vm.call('ping');
 * vm.destroy();
 * ```
 */
export class VM extends EventEmitter<VMEvents> {
  /** Engine-assigned id, unique within its VMM; the guest reads it too. */
  readonly id: number;
  readonly #host: VMHost;
  // Allocated on first use: a million idle VMs should not carry empty maps.
  #pending: Map<number, PendingCall> | undefined;
  #decoder: TextDecoder | undefined;
  #exit: VMExit | undefined;
  #exitWaiters: Array<(exit: VMExit) => void> | undefined;
  #startWaiter: { resolve(): void; reject(err: Error): void } | undefined;
  // Calls made after start() in the same synchronous run, which the native
  // start carries so that the first run serves them. Set from start() until
  // the deferred native start is issued.
  #firstCalls: { ids: number[]; payloads: Uint8Array[] } | undefined;
  #destroyed = false;
  #snapshots = 0;
  #started = false;

  /** Guest RAM size in bytes. */
  readonly memory: number;

  /** @internal */
  constructor(id: number, host: VMHost, memory: number) {
    super();
    this.id = id;
    this.#host = host;
    this.memory = memory;
  }

  /** Current lifecycle state. */
  get state(): VMState {
    if (this.#destroyed) return 'destroyed';
    if (this.#exit) return 'exited';
    this.#issueStart();
    return this.#host.engine().state(this.id);
  }

  /** The VM's end, once it has ended. */
  get exitInfo(): VMExit | undefined {
    return this.#exit;
  }

  /**
   * Builds the VM's KVM context on a worker thread and runs the guest.
   * The engine gets the request at the end of the current synchronous run,
   * with the calls made until then, so `vm.start(); vm.call(m)` has the
   * guest's first run serve m.
   *
   * @returns a Promise that resolves once the guest runs
   * @throws VMMError `ERR_VM_ALREADY_STARTED`, `ERR_VM_DESTROYED`,
   *   `ERR_VMM_CLOSED`; rejects with `ERR_KVM_CREATE`, `ERR_RESOURCE_LIMIT`
   *   or `ERR_OUT_OF_MEMORY` when the context cannot be built
   */
  start(): Promise<void> {
    if (this.#destroyed) return Promise.reject(this.#destroyedError());
    if (this.#firstCalls) {
      return Promise.reject(new VMMError('ERR_VM_ALREADY_STARTED', `VM ${this.id} was already started`));
    }
    if (this.#started) {
      // The engine gives the right error (already started, or exited).
      return new Promise((_resolve, reject) => {
        try {
          this.#host.engine().start(this.id);
        } catch (err) {
          reject(VMMError.fromNative(err));
        }
      });
    }
    return new Promise((resolve, reject) => {
      this.#startWaiter = { resolve, reject };
      this.#started = true;
      this.#firstCalls = { ids: [], payloads: [] };
      this.#host.setAlive(this, true);
      this.#updateHold();
      // The native start waits for the end of this synchronous run, so that
      // `vm.start(); vm.call(m)` queues m before the VM's first run. Else a
      // worker could boot the VM first, park it in its wait and run it a
      // second time for m, with a second event batch for JavaScript.
      queueMicrotask(() => this.#issueStart());
    });
  }

  /** Issues the deferred native start, with the calls made since start(). */
  #issueStart(): void {
    const first = this.#firstCalls;
    if (!first) return;
    this.#firstCalls = undefined;
    if (this.#destroyed) return;
    try {
      this.#host.engine().start(this.id, first.ids, first.payloads);
    } catch (err) {
      const error = VMMError.fromNative(err);
      this.#startWaiter?.reject(error);
      this.#startWaiter = undefined;
      for (const callId of first.ids) {
        this.#pending?.get(callId)?.reject(error);
        this.#pending?.delete(callId);
      }
      this.#started = false;
      this.#host.setAlive(this, false);
      this.#updateHold();
    }
  }

  /**
   * Sends a message to the guest and resolves with its reply. Messages are
   * delivered in order; the guest receives each one from its `wait`
   * hypercall.
   *
   * @param payload - at most 65536 bytes; a string is sent as UTF-8
   * @returns the reply bytes
   * @throws TypeError or RangeError for a bad payload; rejects with VMMError
   *   `ERR_VM_NOT_STARTED`, `ERR_VM_EXITED`, `ERR_VM_DESTROYED` or
   *   `ERR_CALL_UNANSWERED`
   * @example
   * ```ts
   * const reply = new TextDecoder().decode(await vm.call('hello'));
   * ```
   */
  call(payload: Uint8Array | string): Promise<Uint8Array> {
    let bytes: Uint8Array;
    if (typeof payload === 'string') bytes = encoder.encode(payload);
    else if (payload instanceof Uint8Array) bytes = payload;
    else return Promise.reject(invalidType('payload', 'a Uint8Array or a string', payload, 'argument'));
    if (bytes.byteLength > 65536) {
      return Promise.reject(outOfRange('payload', 'at most 65536 bytes', `${bytes.byteLength} bytes`, 'argument'));
    }
    if (this.#destroyed) return Promise.reject(this.#destroyedError());
    if (this.#exit) return Promise.reject(this.#exitedError());
    const callId = this.#host.nextCallId();
    const first = this.#firstCalls;
    if (first) {
      // Copied: the caller may reuse its buffer before the start is issued.
      // Not with slice(), which returns a view for a Buffer.
      first.ids.push(callId);
      first.payloads.push(typeof payload === 'string' ? bytes : new Uint8Array(bytes));
      return new Promise((resolve, reject) => {
        (this.#pending ??= new Map()).set(callId, { resolve, reject });
        this.#updateHold();
      });
    }
    return new Promise((resolve, reject) => {
      try {
        this.#host.engine().call(this.id, callId, bytes);
      } catch (err) {
        reject(VMMError.fromNative(err));
        return;
      }
      (this.#pending ??= new Map()).set(callId, { resolve, reject });
      this.#updateHold();
    });
  }

  /**
   * Captures the VM's memory and vCPU state. The usual moment is while the
   * guest waits for a message; a running VM is paused for the capture and
   * continues after it.
   *
   * @returns the snapshot, ready for `vmm.createVM({ snapshot })`
   * @throws VMMError `ERR_VM_NOT_STARTED`, `ERR_VM_EXITED`, `ERR_VM_DESTROYED`,
   *   `ERR_KVM_STATE` when KVM cannot save a part of the vCPU state
   * @example
   * ```ts
   * await vm.call('warm up');
   * const snapshot = await vm.snapshot();
   * const clone = vmm.createVM({ snapshot });
   * ```
   */
  snapshot(): Promise<Snapshot> {
    if (this.#destroyed) return Promise.reject(this.#destroyedError());
    if (this.#exit) return Promise.reject(this.#exitedError());
    const request = this.#host.nextCallId();
    this.#issueStart();
    return new Promise((resolve, reject) => {
      try {
        this.#host.engine().snapshot(this.id, request);
      } catch (err) {
        reject(VMMError.fromNative(err));
        return;
      }
      this.#snapshots++;
      this.#updateHold();
      this.#host.registerSnapshot(request, {
        resolve: (snapshot) => {
          this.#snapshots--;
          this.#updateHold();
          resolve(snapshot);
        },
        reject: (err) => {
          this.#snapshots--;
          this.#updateHold();
          reject(err);
        },
      });
    });
  }

  /**
   * Reads the guest memory the VM takes on the host, split into pages
   * private to it and pages shared with its image or snapshot.
   *
   * @throws VMMError `ERR_VM_DESTROYED`
   */
  memoryStats(): VMMemoryStats {
    const { privateBytes, sharedBytes } = this.stats();
    return { privateBytes, sharedBytes };
  }

  /**
   * Sets how much guest memory the guest should hand back to the host. A
   * guest built with the bundled runtime takes free pages from its
   * allocator (never pages in use) and reports them. The host drops them,
   * so each falls back to its image or snapshot page, or to zero. A lower
   * target returns pages to the guest. The guest acts when it next waits
   * for a message; follow progress with {@link VM.balloonStats}.
   *
   * @param bytes - target in bytes, rounded down to whole 4 KiB pages
   * @throws RangeError with code `ERR_BALLOON_TARGET` for a target below
   *   zero, above guest RAM or not an integer; VMMError `ERR_VM_EXITED`,
   *   `ERR_VM_DESTROYED`
   * @example
   * ```ts
   * vm.setBalloon(64 * 1024 * 1024);
   * ```
   */
  setBalloon(bytes: number): void {
    if (typeof bytes !== 'number') throw invalidType('bytes', 'a number', bytes, 'argument');
    const ram = this.memory;
    if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes > ram) {
      const err = outOfRange('bytes', `an integer from 0 to the guest RAM size (${ram})`, bytes, 'argument');
      (err as RangeError & { code: string }).code = 'ERR_BALLOON_TARGET';
      throw err;
    }
    if (this.#destroyed) throw this.#destroyedError();
    try {
      this.#host.engine().setBalloon(this.id, Math.floor(bytes / 4096));
    } catch (err) {
      throw VMMError.fromNative(err);
    }
  }

  /**
   * Reads the balloon's target, actual size and the host memory it freed.
   *
   * @throws VMMError `ERR_VM_DESTROYED`
   */
  balloonStats(): VMBalloonStats {
    if (this.#destroyed) throw this.#destroyedError();
    this.#issueStart();
    try {
      const s = this.#host.engine().balloonStats(this.id);
      return {
        target: s.targetBytes,
        actual: s.actualBytes,
        reclaimed: s.reclaimedBytes,
        reportedFree: s.reportedFreeBytes,
        invalidFrames: s.invalidFrames,
      };
    } catch (err) {
      throw VMMError.fromNative(err);
    }
  }

  /**
   * Stops the VM. A running vCPU is interrupted within milliseconds.
   * Idempotent.
   *
   * @returns a Promise that resolves with the exit once the VM has ended
   */
  kill(): Promise<VMExit> {
    if (this.#exit) return Promise.resolve(this.#exit);
    if (this.#destroyed) return Promise.reject(this.#destroyedError());
    const exited = this.wait();
    this.#issueStart();
    this.#host.engine().kill(this.id);
    return exited;
  }

  /**
   * Resolves when the VM ends, with how it ended.
   */
  wait(): Promise<VMExit> {
    if (this.#exit) return Promise.resolve(this.#exit);
    if (this.#destroyed) return Promise.reject(this.#destroyedError());
    return new Promise((resolve) => {
      (this.#exitWaiters ??= []).push(resolve);
      this.#updateHold();
    });
  }

  /**
   * Kills the VM if it runs and releases its KVM context and memory.
   * Pending calls reject with `ERR_VM_DESTROYED`; a started VM that had not
   * ended emits `exit` with reason `killed`, and pending {@link VM.wait}
   * calls resolve with it. Idempotent.
   */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#host.release(this);
    const err = this.#destroyedError();
    this.#rejectAll(err);
    this.#startWaiter?.reject(err);
    this.#startWaiter = undefined;
    const ended = this.#exit === undefined;
    if (!this.#exit) {
      const message = 'destroyed by the host';
      this.#exit = { code: -1, reason: 'killed', detail: { code: -1, reason: 'killed', message } };
    }
    const waiters = this.#exitWaiters ?? [];
    this.#exitWaiters = undefined;
    for (const resolve of waiters) resolve(this.#exit);
    if (ended && this.#started) this.emit('exit', this.#exit);
    this.#host.setAlive(this, false);
    this.#host.hold(this, false);
    this.#host.forget(this);
  }

  /**
   * Reads the VM's counters and resident memory.
   *
   * @throws VMMError `ERR_VM_DESTROYED`
   */
  stats(): VMStats {
    if (this.#destroyed) throw this.#destroyedError();
    this.#issueStart();
    try {
      return this.#host.engine().stats(this.id);
    } catch (err) {
      throw VMMError.fromNative(err);
    }
  }

  /** Handles one engine event for this VM. @internal */
  handleEvent(event: import('./binding').NativeEvent): void {
    if (this.#destroyed) return;
    try {
      this.#handle(event);
    } finally {
      this.#updateHold();
    }
  }

  #handle(event: import('./binding').NativeEvent): void {
    switch (event.type) {
      case 'started':
        this.#startWaiter?.resolve();
        this.#startWaiter = undefined;
        break;
      case 'startFailed':
        this.#startWaiter?.reject(VMMError.fromNative(event.error));
        this.#startWaiter = undefined;
        break;
      case 'console': {
        if (this.listenerCount('console') === 0) break;
        this.#decoder ??= new TextDecoder('utf-8');
        const text = this.#decoder.decode(event.data, { stream: true });
        if (text.length > 0) this.emit('console', text);
        break;
      }
      case 'reply': {
        const call = this.#pending?.get(event.call);
        this.#pending?.delete(event.call);
        call?.resolve(event.data);
        break;
      }
      case 'callFailed': {
        const call = this.#pending?.get(event.call);
        this.#pending?.delete(event.call);
        call?.reject(VMMError.fromNative(event.error));
        break;
      }
      case 'snapshot':
      case 'snapshotFailed':
        // Routed by the VMM to the waiter registered for the request.
        break;
      case 'exit': {
        const exit: VMExit = { code: event.exit.code, reason: event.exit.reason, detail: event.exit };
        this.#exit = exit;
        this.#startWaiter?.resolve();
        this.#startWaiter = undefined;
        this.#rejectAll(this.#exitedError());
        this.#host.setAlive(this, false);
        const waiters = this.#exitWaiters ?? [];
        this.#exitWaiters = undefined;
        for (const resolve of waiters) resolve(exit);
        this.emit('exit', exit);
        break;
      }
    }
  }

  #updateHold(): void {
    const running = this.#started && this.#exit === undefined;
    const held =
      running ||
      (this.#pending?.size ?? 0) > 0 ||
      this.#startWaiter !== undefined ||
      (this.#exitWaiters?.length ?? 0) > 0 ||
      this.#snapshots > 0;
    this.#host.hold(this, held && !this.#destroyed);
  }

  #rejectAll(err: Error): void {
    if (!this.#pending) return;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const call of pending) call.reject(err);
  }

  #destroyedError(): VMMError {
    return new VMMError('ERR_VM_DESTROYED', `VM ${this.id} was destroyed`);
  }

  #exitedError(): VMMError {
    const how = this.#exit ? `: ${this.#exit.detail.message}` : '';
    return new VMMError('ERR_VM_EXITED', `VM ${this.id} has exited${how}`);
  }
}
