import * as path from 'node:path';

import { native } from './binding';
import type { NativeSnapshot } from './binding';
import { VMMError, invalidType } from './errors';

/**
 * An immutable snapshot of a VM: its memory and vCPU state. Every VM created
 * from it with `vmm.createVM({ snapshot })` starts where the snapshotted VM
 * stood, shares the snapshot's pages and owns only the pages it writes.
 * Create one with {@link VM.snapshot}.
 */
export class Snapshot {
  readonly #native: NativeSnapshot;
  #hash: string | undefined;

  /** @internal */
  constructor(nativeSnapshot: NativeSnapshot) {
    this.#native = nativeSnapshot;
  }

  /** Guest RAM size of the snapshotted VM, in bytes. */
  get memory(): number {
    return this.#native.ramSize;
  }

  /** Bytes of non-zero guest pages the snapshot holds. */
  get memoryBytes(): number {
    return this.#native.memoryBytes;
  }

  /** Bytes of pages that differ from the parent snapshot (all pages when there is none). */
  get diffBytes(): number {
    return this.#native.diffBytes;
  }

  /** True when the snapshotted VM was itself a clone of another snapshot. */
  get hasParent(): boolean {
    return this.#native.hasParent;
  }

  /**
   * SHA-256 of the snapshot's content (vCPU state, wait state, RAM size,
   * every non-zero page with its page number, and the balloon), as 64 hex
   * digits. A diff snapshot file names its parent by this hash.
   */
  get hash(): string {
    this.#hash ??= this.#native.hash();
    return this.#hash;
  }

  /**
   * Writes the snapshot to a file, atomically: a temporary file in the same
   * directory, fsync, then rename. A snapshot of a clone is written as a
   * diff that holds only the pages that differ from its parent and names
   * the parent by {@link Snapshot.hash}; loading it needs that parent.
   * The file stores the balloon's target and frames but not its pages, so
   * clones of the loaded file inherit the balloon as clones of this
   * snapshot do.
   *
   * @param file - destination path; an existing file is replaced
   * @throws TypeError for a bad path; rejects with VMMError `ERR_SNAPSHOT_WRITE`
   * @example
   * ```ts
   * await snapshot.save('/var/lib/app/counter.snap');
   * ```
   */
  async save(file: string): Promise<void> {
    if (typeof file !== 'string' || file.length === 0) throw invalidType('path', 'a non-empty string', file, 'argument');
    try {
      await native.saveSnapshot(this.#native, path.resolve(file));
    } catch (err) {
      throw VMMError.fromNative(err);
    }
  }

  /** @internal */
  get native(): NativeSnapshot {
    return this.#native;
  }
}
