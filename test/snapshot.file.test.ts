import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { Image, Snapshot, VM } from '../lib/index.js';
import {
  PAGE_SIZE,
  SnapshotHeader,
  loadGuest,
  makeTempDir,
  parseCounter,
  readSnapshotLayout,
  rejectionOf,
  removeTempDir,
  requireKvm,
  text,
} from './helpers.js';

const execFileAsync = promisify(execFile);

// The compiled package entry point, for a child process to require.
const PACKAGE_ENTRY = path.resolve(__dirname, '../lib/index.js');

/** Bytes the file system allocated for a file: a sparse file counts only its data. */
function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

/**
 * Returns the guest page numbers whose bytes in the memory section of
 * snapshot file `bytes` contain `needle`. A match across a page boundary
 * counts for the page it starts in.
 */
function pagesContaining(bytes: Buffer, needle: string): number[] {
  const { dataOffset, dataSize } = readSnapshotLayout(bytes);
  const memory = bytes.subarray(dataOffset, dataOffset + dataSize);
  const pages: number[] = [];
  for (let at = memory.indexOf(needle); at >= 0; at = memory.indexOf(needle, at + 1)) {
    pages.push(Math.floor(at / PAGE_SIZE));
  }
  return pages;
}

describe('snapshot files', function () {
  let vmm: VMM;
  let counterImage: Image;
  let dir: string;

  before(function () {
    requireKvm(this);
    dir = makeTempDir('snapshot-file');
  });

  after(function () {
    removeTempDir(dir);
  });

  beforeEach(async function () {
    vmm = new VMM();
    counterImage = await loadGuest(vmm, 'counter');
  });

  afterEach(async function () {
    await vmm?.close();
  });

  /** Starts a counter VM and serves `calls` calls on it. */
  async function counterAfter(calls: number): Promise<VM> {
    const vm = vmm.createVM({ image: counterImage });
    await vm.start();
    for (let i = 1; i <= calls; i++) {
      await vm.call(`call ${i}`);
    }
    return vm;
  }

  async function startClone(snapshot: Snapshot): Promise<VM> {
    const clone = vmm.createVM({ snapshot });
    await clone.start();
    return clone;
  }

  describe('save and load', function () {
    it('keeps the hash and sizes', async function () {
      const snapshot = await (await counterAfter(2)).snapshot();
      const file = path.join(dir, 'roundtrip.snap');
      await snapshot.save(file);

      const loaded = await vmm.loadSnapshot(file);

      assert.strictEqual(loaded.hash, snapshot.hash);
      assert.strictEqual(loaded.memory, snapshot.memory);
      assert.strictEqual(loaded.memoryBytes, snapshot.memoryBytes);
      assert.isFalse(loaded.hasParent);
    });

    it('continues the count from a file', async function () {
      const file = path.join(dir, 'count.snap');
      await (await counterAfter(2)).snapshot().then((snapshot) => snapshot.save(file));
      const clone = await startClone(await vmm.loadSnapshot(file));

      const reply = parseCounter(await clone.call('third'));

      assert.strictEqual(reply.count, 3);
      assert.strictEqual(reply.id, clone.id);
    });

    it('rejects a clone of a truncated file', async function () {
      const file = path.join(dir, 'truncated.snap');
      await (await counterAfter(2)).snapshot().then((snapshot) => snapshot.save(file));
      const loaded = await vmm.loadSnapshot(file);
      fs.truncateSync(file, 8192);

      const clone = vmm.createVM({ snapshot: loaded });
      const err = await rejectionOf(clone.start());

      assert.strictEqual(err.code, 'ERR_SNAPSHOT_INVALID');
      assert.include(err.message, 'truncated');
    });

    it('loads a file from another process', async function () {
      // The child saves a counter after two calls and prints the snapshot's
      // hash. This process never had the snapshot in memory.
      const file = path.join(dir, 'child.snap');
      const script = `
        const { VMM, bundledGuest } = require(${JSON.stringify(PACKAGE_ENTRY)});
        (async () => {
          const vmm = new VMM();
          const image = await vmm.loadImage(bundledGuest('counter'));
          const vm = vmm.createVM({ image });
          await vm.start();
          await vm.call('one');
          await vm.call('two');
          const snapshot = await vm.snapshot();
          await snapshot.save(process.argv[1]);
          process.stdout.write(snapshot.hash);
          await vmm.close();
        })().catch((err) => {
          console.error(err);
          process.exitCode = 1;
        });
      `;
      const child = await execFileAsync(process.execPath, ['-e', script, file], { timeout: 30000 });

      const loaded = await vmm.loadSnapshot(file);
      const clone = await startClone(loaded);
      const reply = parseCounter(await clone.call('three'));

      assert.strictEqual(loaded.hash, child.stdout, 'hash of the snapshot the child saved');
      assert.strictEqual(reply.count, 3);
      assert.strictEqual(reply.payload, 'three');
      assert.strictEqual(reply.id, clone.id);
    });

    it('rejects a missing file', async function () {
      const file = path.join(dir, 'missing.snap');

      const err = await rejectionOf(vmm.loadSnapshot(file));

      assert.strictEqual(err.code, 'ERR_SNAPSHOT_READ');
      assert.include(err.message, file);
    });

    it('rejects saving into a missing directory', async function () {
      const snapshot = await (await counterAfter(1)).snapshot();
      const file = path.join(dir, 'no-such-directory', 'x.snap');

      const err = await rejectionOf(snapshot.save(file));

      assert.strictEqual(err.code, 'ERR_SNAPSHOT_WRITE');
      assert.include(err.message, file);
    });

    it('rejects loading a directory', async function () {
      const err = await rejectionOf(vmm.loadSnapshot(dir));

      assert.strictEqual(err.code, 'ERR_SNAPSHOT_READ');
      assert.include(err.message, 'not a regular file');
    });

    it('keeps a directory at the save path', async function () {
      const snapshot = await (await counterAfter(1)).snapshot();
      const target = path.join(dir, 'a-directory');
      fs.mkdirSync(target);

      const err = await rejectionOf(snapshot.save(target));

      assert.strictEqual(err.code, 'ERR_SNAPSHOT_WRITE');
      assert.include(err.message, 'not a regular file');
      assert.isTrue(fs.statSync(target).isDirectory());
    });
  });

  // The message a call sends is written into the guest's request buffer by
  // the VMM, in the wait hypercall. The guest never writes that buffer, so
  // its pages after the first (which may share a heap header with other
  // data) are written by the VMM only, behind KVM's back. The marker sits
  // in such a page. It contains a quote and a newline, which the counter
  // escapes in its reply, so its raw bytes exist only where the VMM put them.
  describe('page written by the VMM', function () {
    /** Returns a payload whose marker starts more than a page into the request buffer. */
    function payloadWith(marker: string): string {
      return 'a'.repeat(PAGE_SIZE + 1000) + marker;
    }

    /** Checks that `marker` is in the saved file, in listed pages inside the request buffer. */
    function assertVMMPageSaved(bytes: Buffer, marker: string): void {
      const layout = readSnapshotLayout(bytes);
      const bufferPage = Math.floor(Number(bytes.readBigUInt64LE(SnapshotHeader.waitBuffer)) / PAGE_SIZE);
      const found = pagesContaining(bytes, marker);

      assert.isNotEmpty(found, 'raw marker in the memory section');
      found.forEach((page) => {
        assert.isAbove(page, bufferPage, `page ${page} lies past the first page of the request buffer`);
        assert.include(layout.pages, page, `page ${page} is listed in the page index`);
      });
    }

    it('is saved in a full snapshot', async function () {
      const marker = 'written "by the VMM"\nfull-1f3a';
      const vm = vmm.createVM({ image: counterImage });
      await vm.start();
      const reply = text(await vm.call(payloadWith(marker)));
      const file = path.join(dir, 'vmm-page-full.snap');
      await (await vm.snapshot()).save(file);

      assert.notInclude(reply, marker, 'the guest must not write the raw marker itself');
      assertVMMPageSaved(fs.readFileSync(file), marker);
    });

    it('is saved in a diff snapshot', async function () {
      const marker = 'written "by the VMM"\ndiff-7c2e';
      const parent = await (await counterAfter(1)).snapshot();
      const clone = await startClone(parent);
      const reply = text(await clone.call(payloadWith(marker)));
      const file = path.join(dir, 'vmm-page-diff.snap');
      await (await clone.snapshot()).save(file);

      assert.notInclude(reply, marker, 'the guest must not write the raw marker itself');
      assertVMMPageSaved(fs.readFileSync(file), marker);
    });
  });

  describe('diff snapshot', function () {
    it('marks a snapshot of a clone', async function () {
      const parent = await (await counterAfter(1)).snapshot();
      const clone = await startClone(parent);
      await clone.call('in the clone');

      const child = await clone.snapshot();

      assert.isFalse(parent.hasParent);
      assert.strictEqual(parent.diffBytes, parent.memoryBytes, 'a snapshot without parent is all difference');
      assert.isTrue(child.hasParent);
      assert.isAbove(child.diffBytes, 0);
      assert.isBelow(child.diffBytes, child.memoryBytes);
    });

    it('stores only the changed pages', async function () {
      // test-share maps a 4 MiB array that the clone reads and never
      // writes, so the parent contains over 4 MiB and the diff a few pages.
      const image = await loadGuest(vmm, 'test-share');
      const vm = vmm.createVM({ image });
      await vm.start();
      const expected = text(await vm.call('checksum'));
      const parent = await vm.snapshot();
      const clone = await startClone(parent);
      const cloneReply = text(await clone.call('checksum'));
      const child = await clone.snapshot();
      const parentFile = path.join(dir, 'share-parent.snap');
      const childFile = path.join(dir, 'share-child.snap');
      await parent.save(parentFile);
      await child.save(childFile);

      assert.strictEqual(cloneReply, expected);
      assert.isAtLeast(parent.memoryBytes, 4 * 1024 * 1024);
      assert.isAtMost(child.diffBytes, child.memoryBytes / 16, `diff of ${child.diffBytes} bytes`);
      assert.isAtMost(
        allocatedBytes(childFile),
        allocatedBytes(parentFile) / 16,
        `child file allocates ${allocatedBytes(childFile)} bytes, parent ${allocatedBytes(parentFile)}`,
      );
    });

    it('rejects loading without parent', async function () {
      const parent = await (await counterAfter(1)).snapshot();
      const clone = await startClone(parent);
      await clone.call('in the clone');
      const file = path.join(dir, 'orphan.snap');
      await (await clone.snapshot()).save(file);

      const err = await rejectionOf(vmm.loadSnapshot(file));

      assert.strictEqual(err.code, 'ERR_SNAPSHOT_INVALID');
      assert.include(err.message, 'parent');
    });

    it('rejects the wrong parent', async function () {
      const parent = await (await counterAfter(1)).snapshot();
      const other = await (await counterAfter(1)).snapshot();
      const clone = await startClone(parent);
      await clone.call('in the clone');
      const file = path.join(dir, 'wrong-parent.snap');
      await (await clone.snapshot()).save(file);

      const err = await rejectionOf(vmm.loadSnapshot(file, { parent: other }));

      assert.notStrictEqual(other.hash, parent.hash);
      assert.strictEqual(err.code, 'ERR_SNAPSHOT_INVALID');
      assert.include(err.message, parent.hash, 'names the parent the file needs');
      assert.include(err.message, other.hash, 'names the parent it was given');
    });

    it('loads with its parent', async function () {
      const parentFile = path.join(dir, 'counter-parent.snap');
      const childFile = path.join(dir, 'counter-child.snap');
      const parent = await (await counterAfter(1)).snapshot();
      await parent.save(parentFile);
      const clone = await startClone(parent);
      await clone.call('clone 1');
      await clone.call('clone 2');
      const child = await clone.snapshot();
      await child.save(childFile);

      const loadedParent = await vmm.loadSnapshot(parentFile);
      const loadedChild = await vmm.loadSnapshot(childFile, { parent: loadedParent });
      const fromChild = await startClone(loadedChild);
      const reply = parseCounter(await fromChild.call('after load'));

      assert.isTrue(loadedChild.hasParent);
      assert.strictEqual(loadedChild.hash, child.hash);
      assert.strictEqual(reply.count, 4);
      assert.strictEqual(reply.id, fromChild.id);
    });

    it('loads a chain of two diffs', async function () {
      const rootFile = path.join(dir, 'chain-root.snap');
      const middleFile = path.join(dir, 'chain-middle.snap');
      const leafFile = path.join(dir, 'chain-leaf.snap');
      const root = await (await counterAfter(1)).snapshot();
      await root.save(rootFile);
      const middleVM = await startClone(root);
      await middleVM.call('middle');
      const middle = await middleVM.snapshot();
      await middle.save(middleFile);
      const leafVM = await startClone(middle);
      await leafVM.call('leaf');
      await (await leafVM.snapshot()).save(leafFile);

      const loadedRoot = await vmm.loadSnapshot(rootFile);
      const loadedMiddle = await vmm.loadSnapshot(middleFile, { parent: loadedRoot });
      const loadedLeaf = await vmm.loadSnapshot(leafFile, { parent: loadedMiddle });
      const clone = await startClone(loadedLeaf);
      const reply = parseCounter(await clone.call('after load'));

      assert.strictEqual(reply.count, 4);
      assert.strictEqual(reply.id, clone.id);
    });
  });
});
