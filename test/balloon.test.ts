import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { Image, Snapshot, VM, VMBalloonStats } from '../lib/index.js';
import {
  PAGE_SIZE,
  errorOf,
  loadGuest,
  makeTempDir,
  readSnapshotLayout,
  removeTempDir,
  requireKvm,
  runToExit,
  sleep,
  text,
} from './helpers.js';

const execFileAsync = promisify(execFile);

// The compiled package entry point, for a child process to require.
const PACKAGE_ENTRY = path.resolve(__dirname, '../lib/index.js');

const MiB = 1024 * 1024;
const GUEST_MEMORY = '128M';
const GUEST_RAM_BYTES = 128 * MiB;
const TOUCH_BYTES = 64 * MiB;

// Share of the touched memory that the host must get back. The rest is the
// page of each 1 MiB balloon chunk that contains the guest allocator's header.
const MIN_RECLAIMED_BYTES = 0.9 * TOUCH_BYTES;

// Bound for snapshots of a VM whose 64 MiB block went into the balloon. Only
// the guest's own pages and one header page per chunk (256 KiB) stay behind.
const MAX_SNAPSHOT_BYTES = 4 * MiB;

// The guest runtime's balloon takes chunks of 256 pages, each inside an
// allocation one page larger. That page keeps the allocator's header and
// whatever the guest wrote there. So after a deflate, a 64 MiB block over the
// old balloon has at most one non-zero page per chunk, plus the one or two
// pages of the runtime's chunk list.
const BALLOON_CHUNK_BYTES = 256 * PAGE_SIZE;
const MAX_NONZERO_PAGES_AFTER_DEFLATE = TOUCH_BYTES / BALLOON_CHUNK_BYTES + 2;

// Free page reporting drops only the whole pages inside a freed block, so
// the partial pages at both ends stay with the guest.
const MAX_UNREPORTED_PAGES = 4;

// Invalid frame numbers in one `bad-frames` request of test-balloon: two past
// RAM, one in the reserved area, 5 GiB, 1 << 52 and all ones.
const BAD_FRAMES_PER_REQUEST = 6;

const SETTLE_TIMEOUT_MS = 5000;
const POLL_INTERVAL_MS = 5;

/**
 * Polls `vm.balloonStats()` until `settled` accepts it, and returns those
 * stats. Fails with the last stats when that takes longer than 5 s.
 */
async function waitForBalloon(
  vm: VM,
  settled: (stats: VMBalloonStats) => boolean,
  expected: string,
): Promise<VMBalloonStats> {
  const deadline = Date.now() + SETTLE_TIMEOUT_MS;
  let stats = vm.balloonStats();
  while (!settled(stats)) {
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${SETTLE_TIMEOUT_MS} ms waiting for the balloon of VM ${vm.id} ` +
          `to reach ${expected}. Last stats: ${JSON.stringify(stats)}`,
      );
    }
    await sleep(POLL_INTERVAL_MS);
    stats = vm.balloonStats();
  }
  return stats;
}

/** Sets the balloon target and waits until the balloon contains exactly that. */
function resizeBalloon(vm: VM, bytes: number): Promise<VMBalloonStats> {
  vm.setBalloon(bytes);
  return waitForBalloon(vm, (stats) => stats.actual === bytes, `${bytes} bytes`);
}

/** Sends a text request to test-balloon and returns its text reply. */
async function request(vm: VM, message: string): Promise<string> {
  return text(await vm.call(message));
}

/** Bytes the file system allocated for a file, which counts only the data of a sparse file. */
function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

describe('memory balloon', function () {
  let vmm: VMM;
  let balloonImage: Image;
  let exitImage: Image;
  let dir: string;

  before(async function () {
    requireKvm(this);
    vmm = new VMM();
    balloonImage = await loadGuest(vmm, 'test-balloon');
    exitImage = await loadGuest(vmm, 'test-exit');
    dir = makeTempDir('balloon');
  });

  after(async function () {
    await vmm?.close();
    removeTempDir(dir);
  });

  // Every VM a test creates, destroyed after it.
  let vms: VM[] = [];

  afterEach(function () {
    for (const vm of vms) vm.destroy();
    vms = [];
  });

  async function startBalloonVM(): Promise<VM> {
    const vm = vmm.createVM({ image: balloonImage, memory: GUEST_MEMORY });
    vms.push(vm);
    await vm.start();
    return vm;
  }

  async function startClone(snapshot: Snapshot): Promise<VM> {
    const clone = vmm.createVM({ snapshot });
    vms.push(clone);
    await clone.start();
    return clone;
  }

  /** Makes the guest write 64 MiB and free it without free page reporting. */
  async function touchAndFree(vm: VM): Promise<void> {
    assert.strictEqual(await request(vm, `touch ${TOUCH_BYTES}`), `ok ${TOUCH_BYTES}`);
    assert.strictEqual(await request(vm, 'free'), 'ok');
  }

  /** Starts test-balloon, touches and frees 64 MiB, then inflates the balloon to 64 MiB. */
  async function inflatedVM(): Promise<VM> {
    const vm = await startBalloonVM();
    await touchAndFree(vm);
    await resizeBalloon(vm, TOUCH_BYTES);
    return vm;
  }

  describe('inflate', function () {
    it('reclaims freed 64 MiB', async function () {
      const vm = await startBalloonVM();
      await touchAndFree(vm);
      const before = vm.memoryStats().privateBytes;

      vm.setBalloon(TOUCH_BYTES);
      const stats = await waitForBalloon(vm, (s) => s.actual === TOUCH_BYTES, `${TOUCH_BYTES} bytes`);
      const after = vm.memoryStats().privateBytes;

      assert.isAtLeast(before - after, MIN_RECLAIMED_BYTES, `private bytes went from ${before} to ${after}`);
      assert.isAtLeast(stats.reclaimed, MIN_RECLAIMED_BYTES);
      assert.strictEqual(stats.actual, stats.target);
      assert.strictEqual(stats.target, TOUCH_BYTES);
    });

    it('keeps serving calls afterwards', async function () {
      const vm = await inflatedVM();

      const pong = await request(vm, 'ping');
      const touched = await request(vm, `touch ${MiB}`);
      const verified = await request(vm, 'verify');

      assert.strictEqual(pong, 'pong');
      assert.strictEqual(touched, `ok ${MiB}`);
      assert.strictEqual(verified, 'ok');
    });

    it('matches the guest page count', async function () {
      const vm = await inflatedVM();

      const guestPages = Number(await request(vm, 'balloon'));

      assert.strictEqual(guestPages, TOUCH_BYTES / PAGE_SIZE);
      assert.strictEqual(vm.balloonStats().actual, guestPages * PAGE_SIZE);
    });

    it('rounds the target down', async function () {
      const vm = await startBalloonVM();

      vm.setBalloon(4 * MiB + 100);
      const stats = await waitForBalloon(vm, (s) => s.actual === 4 * MiB, `${4 * MiB} bytes`);

      assert.strictEqual(stats.target, 4 * MiB);
    });

    it('keeps a target set before start', async function () {
      const vm = vmm.createVM({ image: balloonImage, memory: GUEST_MEMORY });
      vms.push(vm);

      // setBalloon() documents no error for a VM that was not started, so
      // the guest must act on the target once it first waits.
      vm.setBalloon(8 * MiB);
      await vm.start();
      const targetAfterStart = vm.balloonStats().target;

      assert.strictEqual(targetAfterStart, 8 * MiB, 'start() discarded the balloon target');
      const stats = await waitForBalloon(vm, (s) => s.actual === 8 * MiB, `${8 * MiB} bytes`);
      assert.strictEqual(stats.actual, stats.target);
    });
  });

  describe('deflate', function () {
    it('empties the balloon to zero', async function () {
      const vm = await inflatedVM();

      const stats = await resizeBalloon(vm, 0);
      const guestPages = await request(vm, 'balloon');

      assert.strictEqual(stats.actual, 0);
      assert.strictEqual(stats.target, 0);
      assert.strictEqual(guestPages, '0');
    });

    it('returns writable pages to guest', async function () {
      const vm = await inflatedVM();
      await resizeBalloon(vm, 0);

      // The returned pages read as zero or as the image, so the guest's
      // pattern can only be there if the writes landed.
      const touched = await request(vm, `touch ${TOUCH_BYTES}`);
      const verified = await request(vm, 'verify');

      assert.strictEqual(touched, `ok ${TOUCH_BYTES}`);
      assert.strictEqual(verified, 'ok');
    });
  });

  describe('snapshot after inflate', function () {
    it('leaves ballooned pages out', async function () {
      const vm = await inflatedVM();

      const snapshot = await vm.snapshot();

      assert.isBelow(snapshot.memoryBytes, MAX_SNAPSHOT_BYTES);
    });

    it('clones a VM that serves calls', async function () {
      const snapshot = await (await inflatedVM()).snapshot();
      const clone = await startClone(snapshot);

      const pong = await request(clone, 'ping');
      const touched = await request(clone, `touch ${MiB}`);
      const verified = await request(clone, 'verify');

      assert.strictEqual(pong, 'pong');
      assert.strictEqual(touched, `ok ${MiB}`);
      assert.strictEqual(verified, 'ok');
    });

    it('saves a small file', async function () {
      const snapshot = await (await inflatedVM()).snapshot();
      const file = path.join(dir, 'inflated.snap');

      await snapshot.save(file);

      // The file's length covers all of RAM by design, but only the listed
      // pages hold data and every other page is a hole.
      const listedPages = readSnapshotLayout(fs.readFileSync(file)).pages.length;

      assert.isBelow(allocatedBytes(file), MAX_SNAPSHOT_BYTES);
      assert.isBelow(listedPages * PAGE_SIZE, MAX_SNAPSHOT_BYTES);
    });
  });

  describe('balloon in a snapshot file', function () {
    /**
     * Asks the guest how many pages of a fresh 64 MiB allocation are not
     * zero. Over a deflated balloon, only the pages outside the balloon
     * can be.
     */
    async function nonzeroPages(vm: VM): Promise<number> {
      const reply = await request(vm, `nonzero ${TOUCH_BYTES}`);
      assert.match(reply, /^\d+$/, 'reply to a nonzero request');
      return Number(reply);
    }

    /** Starts test-balloon, touches and frees 64 MiB, and snapshots it with an empty balloon. */
    async function patternSnapshot(): Promise<Snapshot> {
      const vm = await startBalloonVM();
      await touchAndFree(vm);
      return vm.snapshot();
    }

    it('keeps the balloon through save and load', async function () {
      const snapshot = await (await inflatedVM()).snapshot();
      const file = path.join(dir, 'balloon-roundtrip.snap');
      await snapshot.save(file);

      const loaded = await vmm.loadSnapshot(file);
      const fromMemory = await startClone(snapshot);
      const fromFile = await startClone(loaded);
      const fileStats = fromFile.balloonStats();
      const guestPages = Number(await request(fromFile, 'balloon'));

      assert.strictEqual(loaded.hash, snapshot.hash);
      assert.deepStrictEqual(fileStats, fromMemory.balloonStats());
      assert.strictEqual(fileStats.actual, TOUCH_BYTES);
      assert.strictEqual(fileStats.target, TOUCH_BYTES);
      assert.strictEqual(guestPages * PAGE_SIZE, fileStats.actual);
    });

    it('stores no ballooned page', async function () {
      const snapshot = await (await inflatedVM()).snapshot();
      const file = path.join(dir, 'balloon-pages.snap');
      await snapshot.save(file);

      const bytes = fs.readFileSync(file);
      const layout = readSnapshotLayout(bytes);
      const listed = new Set(layout.pages);
      const zeroPage = Buffer.alloc(PAGE_SIZE);
      let ballooned = 0;
      let listedFrames = 0;
      let nonzeroFrames = 0;
      for (const run of layout.balloonRuns) {
        for (let frame = run.first; frame < run.first + run.count; frame++) {
          ballooned++;
          if (listed.has(frame)) listedFrames++;
          const at = layout.dataOffset + frame * PAGE_SIZE;
          if (!bytes.subarray(at, at + PAGE_SIZE).equals(zeroPage)) nonzeroFrames++;
        }
      }

      assert.strictEqual(layout.balloonTarget * PAGE_SIZE, TOUCH_BYTES);
      assert.strictEqual(ballooned * PAGE_SIZE, TOUCH_BYTES);
      assert.strictEqual(listedFrames, 0, 'ballooned frames in the page index');
      assert.strictEqual(nonzeroFrames, 0, 'ballooned frames with data in the memory section');
      assert.isBelow(allocatedBytes(file), MAX_SNAPSHOT_BYTES);
    });

    it('loads the balloon in another process', async function () {
      const snapshot = await (await inflatedVM()).snapshot();
      const file = path.join(dir, 'balloon-child.snap');
      await snapshot.save(file);
      const expected = (await startClone(snapshot)).balloonStats();

      // The child loads the file, starts a clone and prints the snapshot's
      // hash, the clone's balloon stats and the guest's balloon count.
      const script = `
        const { VMM } = require(${JSON.stringify(PACKAGE_ENTRY)});
        (async () => {
          const vmm = new VMM();
          const snapshot = await vmm.loadSnapshot(process.argv[1]);
          const clone = vmm.createVM({ snapshot });
          await clone.start();
          const stats = clone.balloonStats();
          const guestPages = new TextDecoder().decode(await clone.call('balloon'));
          process.stdout.write(JSON.stringify({ hash: snapshot.hash, stats, guestPages }));
          await vmm.close();
        })().catch((err) => {
          console.error(err);
          process.exitCode = 1;
        });
      `;
      const child = await execFileAsync(process.execPath, ['-e', script, file], { timeout: 30000 });
      const seen = JSON.parse(child.stdout) as { hash: string; stats: VMBalloonStats; guestPages: string };

      assert.strictEqual(seen.hash, snapshot.hash);
      assert.deepStrictEqual(seen.stats, expected);
      assert.strictEqual(seen.stats.actual, TOUCH_BYTES);
      assert.strictEqual(Number(seen.guestPages) * PAGE_SIZE, TOUCH_BYTES);
    });

    it('deflates a clone of a loaded file', async function () {
      const file = path.join(dir, 'balloon-deflate.snap');
      await (await (await inflatedVM()).snapshot()).save(file);
      const clone = await startClone(await vmm.loadSnapshot(file));

      const stats = await resizeBalloon(clone, 0);
      const guestPages = await request(clone, 'balloon');
      const nonzero = await nonzeroPages(clone);
      const touched = await request(clone, `touch ${TOUCH_BYTES}`);
      const verified = await request(clone, 'verify');

      assert.strictEqual(stats.actual, 0);
      assert.strictEqual(stats.target, 0);
      assert.strictEqual(guestPages, '0');
      assert.isAtMost(nonzero, MAX_NONZERO_PAGES_AFTER_DEFLATE);
      assert.strictEqual(touched, `ok ${TOUCH_BYTES}`);
      assert.strictEqual(verified, 'ok');
    });

    /** A diff snapshot, its file loaded back, and a clone of each. */
    interface DiffRoundTrip {
      child: Snapshot;
      childFile: string;
      loadedChild: Snapshot;
      fromMemory: VM;
      fromFile: VM;
    }

    /**
     * Saves `parent`, sets the balloon of a clone of it to `bytes`, and saves
     * the clone's snapshot as a diff. Then loads both files back and starts
     * a clone of the diff snapshot and one of its loaded file.
     */
    async function diffRoundTrip(parent: Snapshot, bytes: number, name: string): Promise<DiffRoundTrip> {
      const parentFile = path.join(dir, `${name}-parent.snap`);
      const childFile = path.join(dir, `${name}-child.snap`);
      await parent.save(parentFile);
      const clone = await startClone(parent);
      await resizeBalloon(clone, bytes);
      const child = await clone.snapshot();
      await child.save(childFile);

      const loadedParent = await vmm.loadSnapshot(parentFile);
      const loadedChild = await vmm.loadSnapshot(childFile, { parent: loadedParent });
      const fromMemory = await startClone(child);
      const fromFile = await startClone(loadedChild);
      return { child, childFile, loadedChild, fromMemory, fromFile };
    }

    it("keeps a clone's own balloon in a diff", async function () {
      // The parent has 64 MiB in its balloon and the clone deflates to
      // 16 MiB, so the diff must not fall back to the parent's balloon.
      const parent = await (await inflatedVM()).snapshot();

      const { child, childFile, loadedChild, fromMemory, fromFile } = await diffRoundTrip(parent, 16 * MiB, 'deflated');
      const fileStats = fromFile.balloonStats();

      assert.isTrue(loadedChild.hasParent);
      assert.strictEqual(loadedChild.hash, child.hash);
      assert.deepStrictEqual(fileStats, fromMemory.balloonStats());
      assert.strictEqual(fileStats.actual, 16 * MiB);
      assert.strictEqual(fileStats.target, 16 * MiB);
      assert.strictEqual(readSnapshotLayout(fs.readFileSync(childFile)).balloonTarget * PAGE_SIZE, 16 * MiB);
    });

    it('reads ballooned pages of a diff as zero', async function () {
      // The parent's freed 64 MiB still contains the guest's pattern. The
      // clone balloons it, so its diff lists those pages as zero.
      const parent = await patternSnapshot();

      const { child, childFile, loadedChild, fromMemory, fromFile } = await diffRoundTrip(parent, TOUCH_BYTES, 'pattern');
      const fileStats = fromFile.balloonStats();
      assert.deepStrictEqual(fileStats, fromMemory.balloonStats());
      await resizeBalloon(fromMemory, 0);
      await resizeBalloon(fromFile, 0);
      const memoryNonzero = await nonzeroPages(fromMemory);
      const fileNonzero = await nonzeroPages(fromFile);

      assert.strictEqual(loadedChild.hash, child.hash);
      assert.strictEqual(fileStats.actual, TOUCH_BYTES);
      assert.isAtMost(fileNonzero, MAX_NONZERO_PAGES_AFTER_DEFLATE);
      assert.strictEqual(fileNonzero, memoryNonzero);
      assert.isBelow(allocatedBytes(childFile), MAX_SNAPSHOT_BYTES, 'ballooned pages are holes in the diff');
    });
  });

  describe('balloon in a clone', function () {
    it('inherits the original balloon', async function () {
      const original = await inflatedVM();
      const snapshot = await original.snapshot();
      const clone = await startClone(snapshot);

      const cloneStats = clone.balloonStats();
      const originalStats = original.balloonStats();
      const guestPages = Number(await request(clone, 'balloon'));

      assert.strictEqual(cloneStats.actual, originalStats.actual);
      assert.strictEqual(cloneStats.target, originalStats.target);
      assert.strictEqual(guestPages * PAGE_SIZE, cloneStats.actual);
    });

    it('deflates the clone to zero', async function () {
      const original = await inflatedVM();
      const clone = await startClone(await original.snapshot());

      const stats = await resizeBalloon(clone, 0);
      const guestPages = await request(clone, 'balloon');
      const touched = await request(clone, `touch ${TOUCH_BYTES}`);
      const verified = await request(clone, 'verify');

      assert.strictEqual(stats.actual, 0);
      assert.strictEqual(guestPages, '0');
      assert.strictEqual(touched, `ok ${TOUCH_BYTES}`);
      assert.strictEqual(verified, 'ok');
      // The original keeps its own balloon.
      assert.strictEqual(original.balloonStats().actual, TOUCH_BYTES);
    });
  });

  describe('full RAM target', function () {
    it('stays within guest RAM', async function () {
      const vm = await startBalloonVM();

      vm.setBalloon(vm.memory);
      await waitForBalloon(vm, (s) => s.actual > 0, 'any pages');
      // The guest serves this request only after its balloon update ended,
      // so the stats read after the reply are final.
      const guestPages = Number(await request(vm, 'balloon'));
      const stats = vm.balloonStats();
      const pong = await request(vm, 'ping');

      assert.strictEqual(vm.memory, GUEST_RAM_BYTES);
      assert.strictEqual(stats.target, vm.memory);
      assert.isAtMost(stats.actual, vm.memory);
      // The heap cannot give everything, because the image, the stack
      // reserve and one header page per chunk stay with the guest.
      assert.isBelow(stats.actual, stats.target);
      assert.strictEqual(stats.actual, guestPages * PAGE_SIZE);
      assert.strictEqual(pong, 'pong');
    });
  });

  describe('free page reporting', function () {
    it('drops a freed 64 MiB block', async function () {
      const vm = await startBalloonVM();
      assert.strictEqual(await request(vm, `touch ${TOUCH_BYTES}`), `ok ${TOUCH_BYTES}`);
      const before = vm.memoryStats().privateBytes;

      // The guest reports the range in its free() call, before it replies.
      const reply = await request(vm, 'free-report');
      const after = vm.memoryStats().privateBytes;
      const stats = vm.balloonStats();

      assert.strictEqual(reply, 'ok');
      assert.isAtLeast(stats.reportedFree, TOUCH_BYTES - MAX_UNREPORTED_PAGES * PAGE_SIZE);
      assert.isAtLeast(before - after, MIN_RECLAIMED_BYTES, `private bytes went from ${before} to ${after}`);
      assert.isAtLeast(stats.reclaimed, MIN_RECLAIMED_BYTES);
      assert.strictEqual(stats.target, 0);
      assert.strictEqual(stats.actual, 0);
    });

    it('keeps the block reusable', async function () {
      const vm = await startBalloonVM();
      await request(vm, `touch ${TOUCH_BYTES}`);
      await request(vm, 'free-report');

      const touched = await request(vm, `touch ${TOUCH_BYTES}`);
      const verified = await request(vm, 'verify');

      assert.strictEqual(touched, `ok ${TOUCH_BYTES}`);
      assert.strictEqual(verified, 'ok');
    });
  });

  describe('setBalloon() input', function () {
    const invalidTargets: Array<[label: string, value: number, shown: string]> = [
      ['a negative target', -1, '-1'],
      ['a target above RAM', GUEST_RAM_BYTES + PAGE_SIZE, String(GUEST_RAM_BYTES + PAGE_SIZE)],
      ['a fractional target', 1.5, '1.5'],
      ['NaN', NaN, 'NaN'],
    ];

    for (const [label, value, shown] of invalidTargets) {
      it(`rejects ${label}`, async function () {
        const vm = await startBalloonVM();

        const err = errorOf(() => vm.setBalloon(value));

        assert.instanceOf(err, RangeError);
        assert.strictEqual(err.code, 'ERR_BALLOON_TARGET');
        assert.include(err.message, shown);
        assert.strictEqual(vm.balloonStats().target, 0, 'a rejected target must not change the balloon');
      });
    }

    it('rejects a string target', async function () {
      const vm = await startBalloonVM();

      const err = errorOf(() => vm.setBalloon('x' as unknown as number));

      assert.instanceOf(err, TypeError);
      assert.strictEqual(err.code, 'ERR_INVALID_ARG_TYPE');
      assert.strictEqual(vm.balloonStats().target, 0);
    });

    it('rejects a destroyed VM', function () {
      const vm = vmm.createVM({ image: balloonImage, memory: GUEST_MEMORY });
      vm.destroy();

      const setError = errorOf(() => vm.setBalloon(0));
      const statsError = errorOf(() => vm.balloonStats());

      assert.strictEqual(setError.code, 'ERR_VM_DESTROYED');
      assert.strictEqual(statsError.code, 'ERR_VM_DESTROYED');
    });

    it('rejects an exited VM', async function () {
      const vm = vmm.createVM({ image: exitImage });
      vms.push(vm);
      const exit = await runToExit(vm);

      const err = errorOf(() => vm.setBalloon(0));

      assert.strictEqual(exit.reason, 'exit');
      assert.strictEqual(err.code, 'ERR_VM_EXITED');
    });
  });

  describe('hostile frame numbers', function () {
    it('ignores and counts invalid frames', async function () {
      const vm = await startBalloonVM();

      const reply = await request(vm, 'bad-frames');
      const stats = vm.balloonStats();

      assert.strictEqual(reply, 'added 1');
      assert.strictEqual(stats.invalidFrames, BAD_FRAMES_PER_REQUEST);
      // The valid frame is listed twice but enters the balloon once.
      assert.strictEqual(stats.actual, PAGE_SIZE);
    });

    it('adds a ballooned frame once', async function () {
      const vm = await startBalloonVM();
      await request(vm, 'bad-frames');

      const reply = await request(vm, 'bad-frames');
      const stats = vm.balloonStats();

      assert.strictEqual(reply, 'added 0');
      assert.strictEqual(stats.invalidFrames, 2 * BAD_FRAMES_PER_REQUEST);
      assert.strictEqual(stats.actual, PAGE_SIZE);
    });

    it('leaves the VM healthy', async function () {
      const vm = await startBalloonVM();
      await request(vm, 'bad-frames');
      await request(vm, 'bad-frames');

      const pong = await request(vm, 'ping');
      const touched = await request(vm, `touch ${MiB}`);
      const verified = await request(vm, 'verify');

      assert.isUndefined(vm.exitInfo, 'the VM must not have ended');
      assert.strictEqual(pong, 'pong');
      assert.strictEqual(touched, `ok ${MiB}`);
      assert.strictEqual(verified, 'ok');
    });
  });
});
