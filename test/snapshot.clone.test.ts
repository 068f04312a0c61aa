import * as fs from 'node:fs';
import * as path from 'node:path';

import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { Image, Snapshot, VM } from '../lib/index.js';
import {
  PAGE_SIZE,
  consoleContains,
  errorOf,
  loadGuest,
  makeTempDir,
  parseCounter,
  readSnapshotLayout,
  rejectionOf,
  removeTempDir,
  requireKvm,
  runToExit,
  sleep,
  text,
} from './helpers.js';

// Guest page that holds the boot information block (VMM_BOOT_INFO_ADDR,
// 0x10000), and the byte range of its vm_id and random_seed fields
// (docs/guest-abi.md). A clone gets new values there before it runs.
const BOOT_INFO_PAGE = 0x10000 / PAGE_SIZE;
const IDENTITY_START = 16;
const IDENTITY_END = 32;

/** A reply of test-random (csrc/guest/guests/test-random.c). */
interface RandomReply {
  id: number;
  /** The boot page's random_seed, 16 hex digits. */
  seed: string;
  /** 16 bytes from the random hypercall, 32 hex digits. */
  random: string;
}

function parseRandom(reply: Uint8Array): RandomReply {
  return JSON.parse(text(reply)) as RandomReply;
}

/** Starts a clone of `snapshot`. */
async function startClone(vmm: VMM, snapshot: Snapshot): Promise<VM> {
  const clone = vmm.createVM({ snapshot });
  await clone.start();
  return clone;
}

describe('snapshot clones', function () {
  let vmm: VMM;
  let counterImage: Image;

  beforeEach(async function () {
    requireKvm(this);
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

  describe('counter state', function () {
    it('continues the count in a clone', async function () {
      const original = await counterAfter(3);
      const snapshot = await original.snapshot();
      const clone = await startClone(vmm, snapshot);

      const reply = parseCounter(await clone.call('next'));

      assert.strictEqual(reply.count, 4);
      assert.strictEqual(reply.id, clone.id, 'the clone reads its own id from its boot page');
      assert.notStrictEqual(reply.id, original.id);
      assert.strictEqual(reply.payload, 'next');
    });

    it('keeps original and clone independent', async function () {
      const original = await counterAfter(3);
      const clone = await startClone(vmm, await original.snapshot());

      const cloneFirst = parseCounter(await clone.call('clone 1'));
      const cloneSecond = parseCounter(await clone.call('clone 2'));
      const originalNext = parseCounter(await original.call('original 1'));

      assert.strictEqual(cloneFirst.count, 4);
      assert.strictEqual(cloneSecond.count, 5);
      assert.strictEqual(originalNext.count, 4, 'calls to the clone must not count in the original');
      assert.strictEqual(originalNext.id, original.id);
    });

    it('continues in a clone of a clone', async function () {
      const original = await counterAfter(3);
      const clone = await startClone(vmm, await original.snapshot());
      await clone.call('clone 1');
      const grandchild = await startClone(vmm, await clone.snapshot());

      const reply = parseCounter(await grandchild.call('grandchild 1'));

      assert.strictEqual(reply.count, 5);
      assert.strictEqual(reply.id, grandchild.id);
    });

    it('replies alike in two clones', async function () {
      // Two clones of one snapshot hold the same state, so the same calls
      // must get the same replies, apart from the id each reads from its
      // boot page.
      const snapshot = await (await counterAfter(3)).snapshot();
      const first = await startClone(vmm, snapshot);
      const second = await startClone(vmm, snapshot);
      const payloads = ['a', 'bb', 'ccc'];

      const firstReplies = [];
      const secondReplies = [];
      for (const payload of payloads) {
        firstReplies.push(parseCounter(await first.call(payload)));
        secondReplies.push(parseCounter(await second.call(payload)));
      }

      assert.notStrictEqual(first.id, second.id);
      assert.deepStrictEqual(
        firstReplies.map(({ count, payload }) => ({ count, payload })),
        secondReplies.map(({ count, payload }) => ({ count, payload })),
      );
      assert.deepStrictEqual(
        firstReplies.map((reply) => reply.id),
        payloads.map(() => first.id),
      );
      assert.deepStrictEqual(
        secondReplies.map((reply) => reply.id),
        payloads.map(() => second.id),
      );
    });
  });

  // Snapshot A is taken from a counter after 3 calls; clone B of A is
  // started and snapshotted again before any call. B's snapshot cannot have
  // A's hash: B's boot page contains a new vm_id and random_seed, and the vCPU
  // state contains the time stamp counter, which advances. So these tests check
  // that B's snapshot equals A in everything else: as memory, its diff
  // against A is the boot page's identity fields only, and as behaviour,
  // clones of either continue the count alike.
  describe('snapshot of an idle clone', function () {
    let dir: string;

    before(function () {
      dir = makeTempDir('snapshot-clone');
    });

    after(function () {
      removeTempDir(dir);
    });

    it('differs in the boot page only', async function () {
      const snapshotA = await (await counterAfter(3)).snapshot();
      const cloneB = await startClone(vmm, snapshotA);
      const snapshotB = await cloneB.snapshot();
      const fileA = path.join(dir, 'a.snap');
      const fileB = path.join(dir, 'b.snap');
      await snapshotA.save(fileA);
      await snapshotB.save(fileB);
      const bytesA = fs.readFileSync(fileA);
      const bytesB = fs.readFileSync(fileB);
      const layoutA = readSnapshotLayout(bytesA);
      const layoutB = readSnapshotLayout(bytesB);
      const pageOf = (bytes: Buffer, dataOffset: number, page: number): Buffer =>
        bytes.subarray(dataOffset + page * PAGE_SIZE, dataOffset + (page + 1) * PAGE_SIZE);

      // B's file is a diff: it lists the pages whose content differs from A's,
      // although B, in a reused context, may hold private copies of more.
      const changedPages = layoutB.pages.filter(
        (page) => !pageOf(bytesA, layoutA.dataOffset, page).equals(pageOf(bytesB, layoutB.dataOffset, page)),
      );
      const bootA = pageOf(bytesA, layoutA.dataOffset, BOOT_INFO_PAGE);
      const bootB = pageOf(bytesB, layoutB.dataOffset, BOOT_INFO_PAGE);
      const changedBytes: number[] = [];
      for (let i = 0; i < PAGE_SIZE; i++) {
        if (bootA[i] !== bootB[i]) changedBytes.push(i);
      }

      assert.isTrue(snapshotB.hasParent);
      assert.notStrictEqual(snapshotB.hash, snapshotA.hash, 'a clone has its own vm_id and random_seed');
      assert.deepStrictEqual(changedPages, [BOOT_INFO_PAGE], 'pages whose content differs from A');
      assert.deepStrictEqual(layoutB.pages, [BOOT_INFO_PAGE], 'pages the diff lists');
      changedBytes.forEach((offset) => {
        assert.isAtLeast(offset, IDENTITY_START, `boot page byte ${offset} changed`);
        assert.isBelow(offset, IDENTITY_END, `boot page byte ${offset} changed`);
      });
    });

    it('lists no restored page in a diff', async function () {
      const snapshotA = await (await counterAfter(1)).snapshot();
      // X writes pages and ends, so its context returns to the pool with
      // those pages copied back from A but still private. B reuses it.
      const cloneX = await startClone(vmm, snapshotA);
      for (let i = 0; i < 5; i++) await cloneX.call(`x ${i}`);
      const pooledBefore = vmm.stats().pooledContexts;
      cloneX.destroy();
      // A worker releases X's context; B must find it pooled.
      const deadline = Date.now() + 5000;
      while (vmm.stats().pooledContexts <= pooledBefore) {
        if (Date.now() > deadline) throw new Error("X's context never returned to the pool");
        await sleep(2);
      }
      const cloneB = await startClone(vmm, snapshotA);
      const snapshotB = await cloneB.snapshot();
      const fileB = path.join(dir, 'b-reused.snap');
      await snapshotB.save(fileB);

      const layoutB = readSnapshotLayout(fs.readFileSync(fileB));

      assert.isTrue(snapshotB.hasParent);
      assert.deepStrictEqual(layoutB.pages, [BOOT_INFO_PAGE], 'pages the diff lists');
    });

    it('continues like the original snapshot', async function () {
      const snapshotA = await (await counterAfter(3)).snapshot();
      const cloneB = await startClone(vmm, snapshotA);
      const snapshotB = await cloneB.snapshot();
      const fromA = await startClone(vmm, snapshotA);
      const fromB = await startClone(vmm, snapshotB);

      const repliesA = [parseCounter(await fromA.call('x')), parseCounter(await fromA.call('y'))];
      const repliesB = [parseCounter(await fromB.call('x')), parseCounter(await fromB.call('y'))];

      assert.deepStrictEqual(repliesA, [
        { id: fromA.id, count: 4, payload: 'x' },
        { id: fromA.id, count: 5, payload: 'y' },
      ]);
      assert.deepStrictEqual(repliesB, [
        { id: fromB.id, count: 4, payload: 'x' },
        { id: fromB.id, count: 5, payload: 'y' },
      ]);
    });
  });

  describe('randomness', function () {
    let randomImage: Image;

    beforeEach(async function () {
      randomImage = await loadGuest(vmm, 'test-random');
    });

    it('gives each clone a new seed', async function () {
      const original = vmm.createVM({ image: randomImage });
      await original.start();
      const before = parseRandom(await original.call('before snapshot'));
      const snapshot = await original.snapshot();
      const first = await startClone(vmm, snapshot);
      const second = await startClone(vmm, snapshot);

      const firstReply = parseRandom(await first.call('seed'));
      const secondReply = parseRandom(await second.call('seed'));

      assert.match(firstReply.seed, /^[0-9a-f]{16}$/);
      assert.match(secondReply.seed, /^[0-9a-f]{16}$/);
      assert.notStrictEqual(firstReply.seed, before.seed, 'first clone kept the original seed');
      assert.notStrictEqual(secondReply.seed, before.seed, 'second clone kept the original seed');
      assert.notStrictEqual(firstReply.seed, secondReply.seed, 'two clones got the same seed');
    });

    it('keeps a clone seed across calls', async function () {
      const original = vmm.createVM({ image: randomImage });
      await original.start();
      const clone = await startClone(vmm, await original.snapshot());

      const first = parseRandom(await clone.call('one'));
      const second = parseRandom(await clone.call('two'));

      assert.strictEqual(second.seed, first.seed);
      assert.strictEqual(first.id, clone.id);
    });

    it('gives each clone new random bytes', async function () {
      const original = vmm.createVM({ image: randomImage });
      await original.start();
      const before = parseRandom(await original.call('before snapshot'));
      const snapshot = await original.snapshot();
      const first = await startClone(vmm, snapshot);
      const second = await startClone(vmm, snapshot);

      const firstReply = parseRandom(await first.call('random'));
      const secondReply = parseRandom(await second.call('random'));

      assert.match(firstReply.random, /^[0-9a-f]{32}$/);
      assert.match(secondReply.random, /^[0-9a-f]{32}$/);
      assert.notStrictEqual(firstReply.random, secondReply.random, 'two clones read the same random bytes');
      assert.notStrictEqual(firstReply.random, before.random);
      assert.notStrictEqual(secondReply.random, before.random);
    });
  });

  describe('createVM({ snapshot })', function () {
    it('rejects a memory option', async function () {
      const snapshot = await (await counterAfter(1)).snapshot();

      const err = errorOf(() => vmm.createVM({ snapshot, memory: '32M' } as never));

      assert.instanceOf(err, TypeError);
      assert.include(err.message, 'memory');
    });

    it('rejects a cmdline option', async function () {
      const snapshot = await (await counterAfter(1)).snapshot();

      const err = errorOf(() => vmm.createVM({ snapshot, cmdline: 'other' } as never));

      assert.instanceOf(err, TypeError);
      assert.include(err.message, 'cmdline');
    });

    it('keeps the snapshot memory size', async function () {
      const vm = vmm.createVM({ image: counterImage, memory: '32M' });
      await vm.start();
      const snapshot = await vm.snapshot();
      const clone = await startClone(vmm, snapshot);

      assert.strictEqual(snapshot.memory, 32 * 1024 * 1024);
      assert.strictEqual(clone.stats().memoryBytes, 32 * 1024 * 1024);
    });
  });

  describe('VM#snapshot()', function () {
    it('rejects before start', async function () {
      const vm = vmm.createVM({ image: counterImage });

      const err = await rejectionOf(vm.snapshot());

      assert.strictEqual(err.code, 'ERR_VM_NOT_STARTED');
    });

    it('rejects after exit', async function () {
      const vm = vmm.createVM({ image: await loadGuest(vmm, 'hello') });
      await runToExit(vm);

      const err = await rejectionOf(vm.snapshot());

      assert.strictEqual(err.code, 'ERR_VM_EXITED');
    });

    it('rejects after destroy', async function () {
      const vm = await counterAfter(1);
      vm.destroy();

      const err = await rejectionOf(vm.snapshot());

      assert.strictEqual(err.code, 'ERR_VM_DESTROYED');
    });

    it('captures a running VM', async function () {
      const vm = vmm.createVM({ image: await loadGuest(vmm, 'test-spin') });
      const spinning = consoleContains(vm, 'spinning');
      await vm.start();
      await spinning;

      const snapshot = await vm.snapshot();
      // Long enough for a VM that was left paused, or that crashed on
      // resume, to show it in its state.
      await sleep(50);

      assert.strictEqual(vm.state, 'running', 'the VM continues after the capture');
      const clone = await startClone(vmm, snapshot);
      await sleep(50);
      assert.strictEqual(clone.state, 'running', 'the clone spins where the VM stood');
      const exits = await Promise.all([vm.kill(), clone.kill()]);
      assert.deepStrictEqual(
        exits.map((exit) => exit.reason),
        ['killed', 'killed'],
      );
    });
  });
});
