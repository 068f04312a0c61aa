import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { assert } from 'chai';

import { VMM } from '../lib/index.js';
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
  resealSnapshotBalloon,
  resealSnapshotHeader,
  sleep,
} from './helpers.js';
import type { SnapshotLayout } from './helpers.js';

/** One damaged copy of the pristine snapshot file and the reason its load must give. */
interface Corruption {
  name: string;
  /** Changes the file bytes in place, or returns a shorter copy. */
  damage(bytes: Buffer, layout: SnapshotLayout): Buffer | void;
  /** Text the error message must contain. */
  reason: string;
}

/**
 * Writes `bytes` to `file` as a sparse file: pages of zeros become holes,
 * as they are in a file that Snapshot#save() wrote. The loader reads every
 * data region of the memory section, so a copy without holes would test
 * another path than a saved file.
 */
function writeSparse(file: string, bytes: Buffer): void {
  const zeros = Buffer.alloc(PAGE_SIZE);
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, bytes.length);
    for (let at = 0; at < bytes.length; at += PAGE_SIZE) {
      const page = bytes.subarray(at, Math.min(at + PAGE_SIZE, bytes.length));
      if (!page.equals(zeros.subarray(0, page.length))) {
        fs.writeSync(fd, page, 0, page.length, at);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Inverts the bits of the byte at `offset`. */
function flip(bytes: Buffer, offset: number): void {
  bytes[offset] ^= 0xff;
}

/** Returns the first page of guest RAM that the page index does not list. */
function firstUnlistedPage(layout: SnapshotLayout): number {
  const listed = new Set(layout.pages);
  let page = 0;
  while (listed.has(page)) page++;
  return page;
}

/** Guest frames below this one are the reserved first MiB, never in a balloon. */
const FIRST_BALLOON_FRAME = 256;

/** Guest RAM of the ballooned snapshot, and its balloon: two chunks of the guest runtime. */
const BALLOON_GUEST_MEMORY = '16M';
const BALLOON_TARGET_BYTES = 2 * 1024 * 1024;
const BALLOON_TIMEOUT_MS = 5000;

/**
 * Replaces the runs of the balloon section with `runs` and reseals the
 * file. The section's page has room for 256 runs before the memory section.
 */
function writeBalloonRuns(bytes: Buffer, layout: SnapshotLayout, runs: Array<[first: bigint, count: bigint]>): void {
  runs.forEach(([first, count], i) => {
    bytes.writeBigUInt64LE(first, layout.balloonOffset + i * 16);
    bytes.writeBigUInt64LE(count, layout.balloonOffset + i * 16 + 8);
  });
  bytes.writeBigUInt64LE(BigInt(runs.length), SnapshotHeader.balloonCount);
  resealSnapshotBalloon(bytes);
}

/** Returns a listed page above the reserved first MiB, which contains data. */
function listedPageAboveReserved(layout: SnapshotLayout): number {
  const page = layout.pages.find((p) => p >= FIRST_BALLOON_FRAME);
  if (page === undefined) throw new Error('the snapshot lists no page above the first MiB');
  return page;
}

/**
 * Returns a CPUID feature bit (word, bit) that the header does not set. The
 * header lists the features of the host that saved it, which is this host,
 * so this host lacks that bit.
 */
function absentFeatureBit(bytes: Buffer): { word: number; bit: number } {
  // Word 6 (leaf 0x80000001 EDX) first: on Intel CPUs its high bits
  // (3DNow!) are clear.
  for (const word of [6, 0, 1, 2, 3, 4, 5, 7]) {
    const value = bytes.readUInt32LE(SnapshotHeader.features + word * 4);
    for (let bit = 31; bit >= 0; bit--) {
      if ((value & (1 << bit)) === 0) return { word, bit };
    }
  }
  throw new Error('every CPUID feature bit is set in the header');
}

const flips: Corruption[] = [
  { name: 'magic', damage: (b) => flip(b, SnapshotHeader.magic), reason: 'magic' },
  { name: 'version', damage: (b) => flip(b, SnapshotHeader.version), reason: 'version' },
  // A header field without a resealed checksum fails the checksum first.
  { name: 'ram size field', damage: (b) => flip(b, SnapshotHeader.ramSize), reason: 'header checksum' },
  { name: 'data offset field', damage: (b) => flip(b, SnapshotHeader.dataOffset + 1), reason: 'header checksum' },
  { name: 'header padding', damage: (b) => flip(b, 2048), reason: 'header checksum' },
  { name: 'header checksum', damage: (b) => flip(b, SnapshotHeader.headerSha), reason: 'header checksum' },
  {
    name: 'vCPU state',
    damage: (b, l) => flip(b, l.stateOffset + Math.floor(l.stateSize / 2)),
    reason: 'vCPU state checksum',
  },
  { name: 'page index', damage: (b, l) => flip(b, l.indexOffset), reason: 'page index checksum' },
  {
    name: 'listed memory page',
    damage: (b, l) => flip(b, l.dataOffset + l.pages[l.pages.length - 1] * PAGE_SIZE + 100),
    reason: 'memory checksum',
  },
  {
    name: 'unlisted memory page',
    damage: (b, l) => flip(b, l.dataOffset + firstUnlistedPage(l) * PAGE_SIZE + 100),
    reason: 'the page index does not list',
  },
];

// Header edits with the checksum recomputed, so that the check behind the
// checksum is the one that fails.
const resealed: Corruption[] = [
  {
    name: 'version 1',
    damage: (b) => {
      b.writeUInt32LE(1, SnapshotHeader.version);
      resealSnapshotHeader(b);
    },
    reason: 'format version 1 is not supported',
  },
  {
    name: 'unknown version',
    damage: (b) => {
      b.writeUInt32LE(3, SnapshotHeader.version);
      resealSnapshotHeader(b);
    },
    reason: 'format version 3 is not supported',
  },
  {
    name: 'CPU feature missing here',
    damage: (b) => {
      const { word, bit } = absentFeatureBit(b);
      const at = SnapshotHeader.features + word * 4;
      b.writeUInt32LE((b.readUInt32LE(at) | (1 << bit)) >>> 0, at);
      resealSnapshotHeader(b);
    },
    reason: 'CPU features this host lacks',
  },
  {
    name: 'other guest ABI',
    damage: (b) => {
      b.writeUInt32LE(b.readUInt32LE(SnapshotHeader.abiVersion) + 1, SnapshotHeader.abiVersion);
      resealSnapshotHeader(b);
    },
    reason: 'guest ABI',
  },
  {
    name: 'unaligned data offset',
    damage: (b) => {
      b.writeBigUInt64LE(b.readBigUInt64LE(SnapshotHeader.dataOffset) + 8n, SnapshotHeader.dataOffset);
      resealSnapshotHeader(b);
    },
    reason: 'sizes or offsets are inconsistent',
  },
  {
    name: 'content hash',
    damage: (b) => {
      flip(b, SnapshotHeader.contentHash);
      resealSnapshotHeader(b);
    },
    reason: 'content hash',
  },
];

/**
 * Changes guest memory at guest physical address `gpa` with `edit`, which
 * gets the file offset, then recomputes the memory and header checksums, so
 * that the check of the supervisor area is the first to fail. The page must
 * be listed in the page index.
 */
function editMemory(bytes: Buffer, layout: SnapshotLayout, gpa: number, edit: (at: number) => void): void {
  if (!layout.pages.includes(Math.floor(gpa / PAGE_SIZE))) {
    throw new Error(`page of 0x${gpa.toString(16)} is not listed in the snapshot`);
  }
  edit(layout.dataOffset + gpa);
  const sha = createHash('sha256');
  for (const page of layout.pages) {
    const at = layout.dataOffset + page * PAGE_SIZE;
    sha.update(bytes.subarray(at, at + PAGE_SIZE));
  }
  sha.digest().copy(bytes, SnapshotHeader.dataSha);
  resealSnapshotHeader(bytes);
}

// Offset of EFER in the vCPU state: struct kvm_regs (144 bytes), then
// struct kvm_sregs, which has EFER at byte 264.
const STATE_EFER = 144 + 264;
const EFER_NXE = 0x800;

/** Changes the vCPU state with `edit`, then recomputes its checksum and the header's. */
function editState(bytes: Buffer, layout: SnapshotLayout, edit: (state: Buffer) => void): void {
  const state = bytes.subarray(layout.stateOffset, layout.stateOffset + layout.stateSize);
  edit(state);
  createHash('sha256').update(state).digest().copy(bytes, SnapshotHeader.stateSha);
  resealSnapshotHeader(bytes);
}

// Guest physical addresses in the supervisor area, from csrc/kvm/x86_layout.h.
const PAGE_DIRECTORY_0 = 0x3000;
const PAGE_TABLE_LOW = 0x7000;
const STUBS = 0xb000;
const IMAGE_BASE = 0x100000;

/** Address of the page table entry in PAGE_TABLE_LOW for the page at `gpa` below 2 MiB. */
function lowEntry(gpa: number): number {
  return PAGE_TABLE_LOW + (gpa / PAGE_SIZE) * 8;
}

// Edits of the control registers, page tables and stubs, with the checksums
// recomputed. The counter guest has 16 MiB of RAM, code at IMAGE_BASE, and
// read-write RAM from 2 MiB to 4 MiB in one large page.
const supervisor: Corruption[] = [
  {
    name: 'EFER without NXE',
    damage: (b, l) =>
      editState(b, l, (state) => {
        const efer = state.readBigUInt64LE(STATE_EFER);
        state.writeBigUInt64LE(efer & ~BigInt(EFER_NXE), STATE_EFER);
      }),
    reason: 'its control registers (cr0 0x80050033, cr4 0x620, efer 0x500) are not the engine',
  },
  {
    name: 'code mapped writable',
    damage: (b, l) => editMemory(b, l, lowEntry(IMAGE_BASE), (at) => (b[at] |= 0x02)),
    reason: 'the page table entry 0x100067 for RAM at 0x100000 maps it both writable and executable',
  },
  {
    name: 'large page mapped executable',
    // Bit 63, NX, is the top bit of the entry's last byte.
    damage: (b, l) => editMemory(b, l, PAGE_DIRECTORY_0 + 8, (at) => (b[at + 7] &= 0x7f)),
    reason: 'for RAM at 0x200000 maps it both writable and executable',
  },
  {
    name: 'page table outside the pool',
    damage: (b, l) => editMemory(b, l, PAGE_DIRECTORY_0 + 8, (at) => b.writeBigUInt64LE(0x1027n, at)),
    reason: 'the page directory entry 0x1027 for RAM at 0x200000 points outside the page-table pool',
  },
  {
    name: 'supervisor page mapped for user mode',
    damage: (b, l) => editMemory(b, l, lowEntry(0x1000), (at) => (b[at] |= 0x04)),
    reason: 'its supervisor page at 0x7000 differs',
  },
  {
    name: 'exception stub',
    damage: (b, l) => editMemory(b, l, STUBS, (at) => flip(b, at)),
    reason: 'its supervisor page at 0xb000 differs',
  },
];

/** Cuts the file to the length `cut` returns. */
function truncation(name: string, cut: (bytes: Buffer, layout: SnapshotLayout) => number, reason: string): Corruption {
  return { name: `truncated at ${name}`, damage: (b, l) => b.subarray(0, cut(b, l)), reason };
}

/** Writes `value` into the u64 header field at `offset` and reseals the header. */
function resealedField(name: string, offset: number, value: (bytes: Buffer, layout: SnapshotLayout) => bigint, reason: string): Corruption {
  return {
    name,
    damage: (b, l) => {
      b.writeBigUInt64LE(value(b, l), offset);
      resealSnapshotHeader(b);
    },
    reason,
  };
}

/** Replaces the balloon runs, with both checksums recomputed. */
function balloonRuns(name: string, runs: (layout: SnapshotLayout) => Array<[bigint, bigint]>, reason: string): Corruption {
  return { name, damage: (b, l) => writeBalloonRuns(b, l, runs(l)), reason };
}

const ramPages = (l: SnapshotLayout): bigint => BigInt(l.dataSize / PAGE_SIZE);
const INCONSISTENT = 'sizes or offsets are inconsistent';
const OUTSIDE_RAM = 'lies outside frames 256 to';

// Damage to the balloon of a snapshot whose guest handed back 2 MiB.
const balloonCases: Corruption[] = [
  { name: 'flipped balloon run', damage: (b, l) => flip(b, l.balloonOffset + 1), reason: 'balloon section checksum' },
  { name: 'flipped balloon target', damage: (b) => flip(b, SnapshotHeader.balloonTarget), reason: 'header checksum' },
  { name: 'flipped balloon checksum', damage: (b) => flip(b, SnapshotHeader.balloonSha), reason: 'header checksum' },
  resealedField('balloon target above RAM', SnapshotHeader.balloonTarget, (_b, l) => ramPages(l) + 1n, 'balloon target of'),
  // With the header resealed, only the content hash still covers the target.
  resealedField('other balloon target', SnapshotHeader.balloonTarget, (_b, l) => BigInt(l.balloonTarget - 1), 'content hash'),
  resealedField('balloon run count 2^60', SnapshotHeader.balloonCount, () => 1n << 60n, INCONSISTENT),
  resealedField('balloon runs past the memory offset', SnapshotHeader.balloonCount, () => 1000n, INCONSISTENT),
  resealedField('balloon offset inside the index', SnapshotHeader.balloonOffset, (_b, l) => BigInt(l.indexOffset), INCONSISTENT),
  resealedField('balloon offset near 2^64', SnapshotHeader.balloonOffset, () => (1n << 64n) - 8n, INCONSISTENT),
  balloonRuns('balloon run in the first MiB', () => [[1n, 1n]], OUTSIDE_RAM),
  balloonRuns('balloon run ending past RAM', (l) => [[ramPages(l) - 1n, 2n]], OUTSIDE_RAM),
  balloonRuns('balloon run starting past RAM', () => [[1n << 63n, 1n]], OUTSIDE_RAM),
  balloonRuns('balloon run of 2^64 - 1 frames', () => [[300n, (1n << 64n) - 1n]], OUTSIDE_RAM),
  balloonRuns('empty balloon run', () => [[300n, 0n]], 'balloon run 0 is empty'),
  balloonRuns('repeated balloon frame', () => [[300n, 2n], [301n, 1n]], 'balloon run 1 (from frame 301) repeats frames'),
  balloonRuns(
    'balloon runs out of order',
    (l) => [...l.balloonRuns].reverse().map((r): [bigint, bigint] => [BigInt(r.first), BigInt(r.count)]),
    'repeats frames or is out of order',
  ),
  balloonRuns('touching balloon runs', () => [[300n, 2n], [302n, 1n]], 'touches the run before'),
  balloonRuns('ballooned frame with data', (l) => [[BigInt(listedPageAboveReserved(l)), 1n]], 'holds data'),
  truncation('the balloon section', (_b, l) => l.balloonOffset + 8, 'truncated'),
];

const SHORT_HEADER = 'shorter than its 4096-byte header';

const truncations: Corruption[] = [
  truncation('0', () => 0, SHORT_HEADER),
  truncation('100', () => 100, SHORT_HEADER),
  truncation('4095', () => PAGE_SIZE - 1, SHORT_HEADER),
  truncation('4096', () => PAGE_SIZE, 'truncated'),
  truncation('the middle of the vCPU state', (_b, l) => l.stateOffset + Math.floor(l.stateSize / 2), 'truncated'),
  truncation('the middle of the memory', (_b, l) => l.dataOffset + Math.floor(l.dataSize / 2), 'truncated'),
  truncation('size - 1', (b) => b.length - 1, 'truncated'),
];

describe('corrupted snapshot file', function () {
  let dir: string;
  let pristineFile: string;
  let pristine: Buffer;
  let layout: SnapshotLayout;
  let ballooned: Buffer;
  let balloonedLayout: SnapshotLayout;
  let vmm: VMM;

  before(async function () {
    requireKvm(this);
    dir = makeTempDir('snapshot-corrupt');
    pristineFile = path.join(dir, 'pristine.snap');
    const balloonedFile = path.join(dir, 'ballooned.snap');
    const setup = new VMM();
    try {
      const vm = setup.createVM({ image: await loadGuest(setup, 'counter') });
      await vm.start();
      await vm.call('one');
      await (await vm.snapshot()).save(pristineFile);

      const balloonVM = setup.createVM({ image: await loadGuest(setup, 'test-balloon'), memory: BALLOON_GUEST_MEMORY });
      await balloonVM.start();
      balloonVM.setBalloon(BALLOON_TARGET_BYTES);
      const deadline = Date.now() + BALLOON_TIMEOUT_MS;
      while (balloonVM.balloonStats().actual < BALLOON_TARGET_BYTES && Date.now() < deadline) {
        await sleep(5);
      }
      await (await balloonVM.snapshot()).save(balloonedFile);
    } finally {
      await setup.close();
    }
    pristine = fs.readFileSync(pristineFile);
    layout = readSnapshotLayout(pristine);
    ballooned = fs.readFileSync(balloonedFile);
    balloonedLayout = readSnapshotLayout(ballooned);
  });

  after(function () {
    removeTempDir(dir);
  });

  beforeEach(function () {
    vmm = new VMM();
  });

  afterEach(async function () {
    await vmm?.close();
  });

  it('has the layout the cases assume', function () {
    // The cases damage regions at these offsets, so check that the regions exist.
    assert.strictEqual(pristine.subarray(0, 8).toString('latin1'), 'NVMMSNAP');
    assert.strictEqual(layout.stateOffset, PAGE_SIZE);
    assert.isAbove(layout.stateSize, 1);
    assert.isAtLeast(layout.indexOffset, layout.stateOffset + layout.stateSize);
    assert.strictEqual(layout.indexOffset % PAGE_SIZE, 0);
    assert.isNotEmpty(layout.pages);
    assert.strictEqual(layout.dataOffset % PAGE_SIZE, 0);
    assert.isBelow(firstUnlistedPage(layout) * PAGE_SIZE, layout.dataSize);
    assert.strictEqual(pristine.length, layout.dataOffset + layout.dataSize);
  });

  it('has the balloon the balloon cases assume', function () {
    const frames = balloonedLayout.balloonRuns.reduce((sum, run) => sum + run.count, 0);

    assert.strictEqual(balloonedLayout.balloonTarget * PAGE_SIZE, BALLOON_TARGET_BYTES);
    assert.strictEqual(frames * PAGE_SIZE, BALLOON_TARGET_BYTES);
    assert.isAtLeast(balloonedLayout.balloonRuns.length, 2, 'the out-of-order case swaps two runs');
    assert.strictEqual(balloonedLayout.balloonOffset % PAGE_SIZE, 0);
    assert.isAtLeast(balloonedLayout.balloonOffset, balloonedLayout.indexOffset + balloonedLayout.pages.length * 8);
    // The section's page ends where the memory section starts.
    assert.strictEqual(balloonedLayout.balloonOffset + PAGE_SIZE, balloonedLayout.dataOffset);
    assert.isAtLeast(listedPageAboveReserved(balloonedLayout), FIRST_BALLOON_FRAME);
  });

  for (const group of [
    { title: 'one flipped byte', cases: flips, balloon: false },
    { title: 'a resealed header', cases: resealed, balloon: false },
    { title: 'a resealed supervisor area', cases: supervisor, balloon: false },
    { title: 'truncation', cases: truncations, balloon: false },
    { title: 'a damaged balloon', cases: balloonCases, balloon: true },
  ]) {
    describe(group.title, function () {
      for (const corruption of group.cases) {
        it(`rejects ${corruption.name}`, async function () {
          const bytes = Buffer.from(group.balloon ? ballooned : pristine);
          const damaged = corruption.damage(bytes, group.balloon ? balloonedLayout : layout) ?? bytes;
          const file = path.join(dir, `${corruption.name.replace(/\W+/g, '-')}.snap`);
          writeSparse(file, damaged);

          const err = await rejectionOf(vmm.loadSnapshot(file));

          assert.strictEqual(err.code, 'ERR_SNAPSHOT_INVALID', err.message);
          assert.include(err.message, corruption.reason);
          assert.include(err.message, file, 'the message names the file');
        });
      }
    });
  }

  it('still loads the pristine file', async function () {
    const snapshot = await vmm.loadSnapshot(pristineFile);
    const clone = vmm.createVM({ snapshot });
    await clone.start();

    const reply = parseCounter(await clone.call('two'));

    assert.strictEqual(reply.count, 2);
  });

  it('still loads the ballooned file', async function () {
    const file = path.join(dir, 'ballooned-copy.snap');
    writeSparse(file, ballooned);
    const snapshot = await vmm.loadSnapshot(file);
    const clone = vmm.createVM({ snapshot });
    await clone.start();

    const stats = clone.balloonStats();

    assert.strictEqual(stats.actual, BALLOON_TARGET_BYTES);
    assert.strictEqual(stats.target, BALLOON_TARGET_BYTES);
  });

  it('loads a sparse copy of the file', async function () {
    // writeSparse() is how every case above writes its copy, so an
    // undamaged copy must load.
    const file = path.join(dir, 'copy.snap');
    writeSparse(file, pristine);

    const snapshot = await vmm.loadSnapshot(file);

    assert.isFalse(snapshot.hasParent);
  });
});
