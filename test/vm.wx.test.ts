import * as fs from 'node:fs';
import * as path from 'node:path';

import { assert } from 'chai';

import { VMM, bundledGuest } from '../lib/index.js';
import type { Image, VM, VMExit } from '../lib/index.js';
import {
  PF_R,
  PF_W,
  PF_X,
  PT_LOAD,
  buildGuestElf,
  getHeaderField,
  getProgramHeaderField,
  guestElfLayout,
} from './fixtures/elf-builder.js';
import type { ProgramHeader } from './fixtures/elf-builder.js';
import { captureConsole, makeTempDir, removeTempDir, requireKvm, runToExit, sleep, text } from './helpers.js';

const PAGE_FAULT_VECTOR = 14;

// x86 page-fault error code bits.
const PF_PRESENT = 0x1;
const PF_WRITE = 0x2;
const PF_USER = 0x4;
const PF_FETCH = 0x10;

// A user-mode write to a present page that is not writable, and a user-mode
// instruction fetch from a present page that is not executable.
const WRITE_VIOLATION = PF_PRESENT | PF_WRITE | PF_USER;
const FETCH_VIOLATION = PF_PRESENT | PF_USER | PF_FETCH;

const MiB = 1024 * 1024;
const GUEST_RAM = 16 * MiB;
const BOOT_INFO_ADDR = 0x10000;
// The runtime keeps this much below the top of RAM for the stack (VMM_STACK_RESERVE).
const STACK_RESERVE = 256 * 1024;

/** One PT_LOAD segment of an ELF file: [start, end) in guest addresses. */
interface Segment {
  flags: number;
  start: number;
  end: number;
}

/** Reads the PT_LOAD segments with a non-zero p_memsz from an ELF file. */
function loadSegments(file: string): Segment[] {
  const elf = fs.readFileSync(file);
  const segments: Segment[] = [];
  const count = Number(getHeaderField(elf, 'e_phnum'));
  for (let index = 0; index < count; index++) {
    const memsz = Number(getProgramHeaderField(elf, index, 'p_memsz'));
    if (Number(getProgramHeaderField(elf, index, 'p_type')) !== PT_LOAD || memsz === 0) continue;
    const start = Number(getProgramHeaderField(elf, index, 'p_vaddr'));
    segments.push({ flags: Number(getProgramHeaderField(elf, index, 'p_flags')), start, end: start + memsz });
  }
  return segments;
}

/** Returns the one segment with exactly `flags`. */
function segmentWith(segments: Segment[], flags: number): Segment {
  const matches = segments.filter((segment) => segment.flags === flags);
  assert.lengthOf(matches, 1, `segments with p_flags ${flags}`);
  return matches[0] as Segment;
}

/** Returns the address that test-wx printed for `action`, as "0x..." text. */
function targetOf(output: string, action: string): string {
  const match = new RegExp(`test-wx: ${action} target (0x[0-9a-f]+)\\n`).exec(output);
  assert.isNotNull(match, `target line of ${action} in ${JSON.stringify(output)}`);
  return (match as RegExpExecArray)[1] as string;
}

/** Checks the parts of a page-fault exit that every W^X violation shares. */
function assertPageFault(exit: VMExit, errorCode: number, cr2: string): void {
  assert.strictEqual(exit.reason, 'crash', exit.detail.message);
  assert.strictEqual(exit.detail.vector, PAGE_FAULT_VECTOR);
  assert.strictEqual(exit.detail.errorCode, errorCode);
  assert.strictEqual(exit.detail.cr2, cr2);
  const cause = errorCode === WRITE_VIOLATION ? 'write denied' : 'instruction fetch denied';
  assert.include(exit.detail.message, `${cause} by the page's permissions`);
}

describe('W^X page permissions', function () {
  let vmm: VMM;

  before(function () {
    requireKvm(this);
  });

  beforeEach(function () {
    vmm = new VMM();
  });

  afterEach(async function () {
    await vmm?.close();
  });

  describe('in the test-wx guest', function () {
    const segments = loadSegments(bundledGuest('test-wx'));
    const text = segmentWith(segments, PF_R | PF_X);
    const rodata = segmentWith(segments, PF_R);
    const data = segmentWith(segments, PF_R | PF_W);
    const imageEnd = Math.max(...segments.map((segment) => segment.end));

    /** Runs test-wx with `action` on its command line until it exits. */
    async function runAction(action: string): Promise<{ exit: VMExit; output: string }> {
      const image = await vmm.loadImage(bundledGuest('test-wx'));
      const vm = vmm.createVM({ image, memory: GUEST_RAM, cmdline: action });
      const consoleOutput = captureConsole(vm);
      const exit = await runToExit(vm);
      return { exit, output: consoleOutput.text() };
    }

    it('has code, rodata and data segments', function () {
      assert.lengthOf(segments, 3);
      assert.isBelow(text.end, rodata.start);
      assert.isBelow(rodata.end, data.start);
    });

    it('allows reads, writes and calls', async function () {
      const { exit, output } = await runAction('allowed');

      assert.strictEqual(exit.reason, 'exit', exit.detail.message);
      assert.strictEqual(exit.code, 0);
      assert.include(output, 'test-wx: allowed ok\n');
      assert.notInclude(output, 'unexpected');
    });

    const writes = [
      { action: 'write-text', segment: text },
      { action: 'write-rodata', segment: rodata },
    ];
    for (const { action, segment } of writes) {
      it(`faults on ${action}`, async function () {
        const { exit, output } = await runAction(action);
        const target = targetOf(output, action);
        const rip = Number(exit.detail.rip);

        assertPageFault(exit, WRITE_VIOLATION, target);
        assert.isAtLeast(Number(target), segment.start);
        assert.isBelow(Number(target), segment.end);
        assert.isAtLeast(rip, text.start, 'the store runs in the code segment');
        assert.isBelow(rip, text.end, 'the store runs in the code segment');
      });
    }

    const fetches: { action: string; low: number; high: number }[] = [
      { action: 'exec-rodata', low: rodata.start, high: rodata.end },
      { action: 'exec-data', low: data.start, high: data.end },
      { action: 'exec-heap', low: imageEnd, high: GUEST_RAM - STACK_RESERVE },
      // The top 2 MiB of RAM is one large page.
      { action: 'exec-stack', low: GUEST_RAM - STACK_RESERVE, high: GUEST_RAM },
      { action: 'exec-bootinfo', low: BOOT_INFO_ADDR, high: BOOT_INFO_ADDR + 0x1000 },
    ];
    for (const { action, low, high } of fetches) {
      it(`faults on ${action}`, async function () {
        const { exit, output } = await runAction(action);
        const target = targetOf(output, action);

        assertPageFault(exit, FETCH_VIOLATION, target);
        assert.strictEqual(exit.detail.rip, target, 'rip is the address the call jumped to');
        assert.isAtLeast(Number(target), low);
        assert.isBelow(Number(target), high);
        assert.notInclude(output, 'unexpected');
      });
    }
  });

  // Images whose segments fill whole 2 MiB ranges, which the VMM maps with
  // large pages, and segments that end inside a 2 MiB range, which need a
  // 4 KiB page table. Their code stores to or jumps to one address per step.
  // Zero bytes decode as `add %al, (%rax)`, and rax contains the jump target,
  // so running a zero-filled executable page faults on a write at rip.
  describe('in large pages and page tables', function () {
    let dir: string;
    let fileCount = 0;

    before(function () {
      dir = makeTempDir('wx');
    });

    after(function () {
      removeTempDir(dir);
    });

    /** Returns a zero-filled PT_LOAD with `flags` at [vaddr, vaddr + memsz). */
    function zeroSegment(flags: number, vaddr: number, memsz: number): ProgramHeader {
      return {
        type: PT_LOAD,
        flags,
        offset: 0n,
        vaddr: BigInt(vaddr),
        filesz: 0n,
        memsz: BigInt(memsz),
        align: 0x1000n,
      };
    }

    /** `movabs $address, %rax`: 10 bytes. */
    function loadRax(address: number): number[] {
      const bytes = Buffer.alloc(8);
      bytes.writeBigUInt64LE(BigInt(address));
      return [0x48, 0xb8, ...bytes];
    }

    type Step = { write: number } | { jump: number };

    /**
     * Machine code for `steps`: `movb $0, (%rax)` (3 bytes) for a write,
     * `jmp *%rax` (2 bytes) for a jump, then `jmp .` in case nothing faults.
     */
    function stepsCode(steps: Step[]): number[] {
      const code: number[] = [];
      for (const step of steps) {
        if ('write' in step) {
          code.push(...loadRax(step.write), 0xc6, 0x00, 0x00);
        } else {
          code.push(...loadRax(step.jump), 0xff, 0xe0);
        }
      }
      return [...code, 0xeb, 0xfe];
    }

    async function loadImage(extraProgramHeaders: ProgramHeader[], steps: Step[]): Promise<Image> {
      fileCount += 1;
      const file = path.join(dir, `image-${fileCount}.elf`);
      fs.writeFileSync(file, buildGuestElf({ extraProgramHeaders, code: stepsCode(steps) }));
      return vmm.loadImage(file);
    }

    /** Runs the steps and returns the exit, killing the VM if it spins instead. */
    async function runSteps(
      extraProgramHeaders: ProgramHeader[],
      steps: Step[],
      memory = GUEST_RAM,
    ): Promise<VMExit> {
      const vm: VM = vmm.createVM({ image: await loadImage(extraProgramHeaders, steps), memory });
      const exited = vm.wait();
      await vm.start();
      const timer = setTimeout(() => vm.kill(), 2000);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    }

    // [4 MiB, 8 MiB) executable: two large pages. [8 MiB, 10 MiB) read-only:
    // one large page. One executable page at 10 MiB + 4 KiB, inside a 2 MiB
    // range of read-write pages: a page table.
    const LARGE_CODE = 4 * MiB;
    const LARGE_RODATA = 8 * MiB;
    const SMALL_CODE = 10 * MiB + 0x1000;
    const headers = [
      zeroSegment(PF_R | PF_X, LARGE_CODE, 4 * MiB),
      zeroSegment(PF_R, LARGE_RODATA, 2 * MiB),
      zeroSegment(PF_R | PF_X, SMALL_CODE, 0x1000),
    ];
    const hex = (address: number): string => `0x${address.toString(16)}`;
    // The first step's `movabs` is at the entry point, and its store after it.
    const layout = guestElfLayout({ extraProgramHeaders: headers, code: stepsCode([{ write: 0 }]) });
    const firstStore = hex(Number(layout.entry) + 10);

    it('faults on a write to a large code page', async function () {
      const exit = await runSteps(headers, [{ write: LARGE_CODE + MiB }]);

      assertPageFault(exit, WRITE_VIOLATION, hex(LARGE_CODE + MiB));
      assert.strictEqual(exit.detail.rip, firstStore);
    });

    it('runs a large code page', async function () {
      const target = LARGE_CODE + 3 * MiB;

      const exit = await runSteps(headers, [{ jump: target }]);

      // The fetch at the target worked and its `add %al, (%rax)` faulted.
      assertPageFault(exit, WRITE_VIOLATION, hex(target));
      assert.strictEqual(exit.detail.rip, hex(target));
    });

    it('faults on running a large read-only page', async function () {
      const target = LARGE_RODATA + MiB;

      const exit = await runSteps(headers, [{ jump: target }]);

      assertPageFault(exit, FETCH_VIOLATION, hex(target));
      assert.strictEqual(exit.detail.rip, hex(target));
    });

    it('faults on a write to a large read-only page', async function () {
      const exit = await runSteps(headers, [{ write: LARGE_RODATA }]);

      assertPageFault(exit, WRITE_VIOLATION, hex(LARGE_RODATA));
    });

    it('runs a code page inside a page table', async function () {
      const exit = await runSteps(headers, [{ jump: SMALL_CODE }]);

      assertPageFault(exit, WRITE_VIOLATION, hex(SMALL_CODE));
      assert.strictEqual(exit.detail.rip, hex(SMALL_CODE));
    });

    it('faults on running the page below it', async function () {
      const target = SMALL_CODE - 0x1000;

      const exit = await runSteps(headers, [{ jump: target }]);

      assertPageFault(exit, FETCH_VIOLATION, hex(target));
    });

    it('writes the page above it', async function () {
      // The first write must work, so the fault comes from the second.
      const exit = await runSteps(headers, [{ write: SMALL_CODE + 0x1000 }, { write: SMALL_CODE }]);

      assertPageFault(exit, WRITE_VIOLATION, hex(SMALL_CODE));
    });

    it('applies each image in a reused context', async function () {
      // Both images have 4 MiB at LARGE_CODE, executable in one and
      // read-write in the other, so the page tables at the same guest
      // addresses differ. KVM must not keep the previous image's mappings.
      const readWrite = [zeroSegment(PF_R | PF_W, LARGE_CODE, 4 * MiB)];
      const target = LARGE_CODE + MiB;
      const exits: VMExit[] = [];
      for (const segments of [headers, readWrite, headers]) {
        exits.push(await runSteps(segments, [{ jump: target }]));
        for (let tries = 0; vmm.stats().pooledContexts === 0 && tries < 100; tries++) {
          await sleep(10);
        }
      }

      assert.strictEqual(vmm.stats().maxResidentReached, 1, 'all three ran in one KVM context');
      assertPageFault(exits[0] as VMExit, WRITE_VIOLATION, hex(target));
      assertPageFault(exits[1] as VMExit, FETCH_VIOLATION, hex(target));
      assertPageFault(exits[2] as VMExit, WRITE_VIOLATION, hex(target));
    });

    it('maps 62 segments across 2 MiB boundaries', async function () {
      // 64 program headers, the most an image may have: PT_LOAD 0, PT_NOTE
      // and 62 more. Each of these crosses a 2 MiB boundary, so it needs two
      // page tables: 124 of the pool's 128.
      const crossing: ProgramHeader[] = [];
      for (let index = 0; index < 62; index++) {
        const boundary = (4 + 4 * index) * MiB;
        const flags = index % 2 === 0 ? PF_R : PF_R | PF_X;
        crossing.push(zeroSegment(flags, boundary - 0x1000, 0x2000));
      }
      const last = (4 + 4 * 61) * MiB;

      const runs = await runSteps(crossing, [{ jump: last }], 256 * MiB);
      const stops = await runSteps(crossing, [{ jump: last + 0x1000 }], 256 * MiB);

      assertPageFault(runs, WRITE_VIOLATION, hex(last));
      assert.strictEqual(runs.detail.rip, hex(last));
      assertPageFault(stops, FETCH_VIOLATION, hex(last + 0x1000));
    });
  });

  describe('in snapshots', function () {
    let dir: string;

    before(function () {
      dir = makeTempDir('wx-snapshot');
    });

    after(function () {
      removeTempDir(dir);
    });

    /** Starts test-wx serving calls, runs the allowed accesses and returns the VM. */
    async function servingGuest(): Promise<VM> {
      const image = await vmm.loadImage(bundledGuest('test-wx'));
      const vm = vmm.createVM({ image, memory: GUEST_RAM });
      await vm.start();
      assert.strictEqual(text(await vm.call('allowed')), 'ok');
      return vm;
    }

    /** Calls `action` on a clone and returns its exit and console output. */
    async function faultClone(vm: VM, action: string): Promise<{ exit: VMExit; output: string }> {
      const consoleOutput = captureConsole(vm);
      const call = vm.call(action).catch(() => undefined);
      const exit = await vm.wait();
      await call;
      return { exit, output: consoleOutput.text() };
    }

    it('keeps code read-only in a clone', async function () {
      const parent = await servingGuest();
      const clone = vmm.createVM({ snapshot: await parent.snapshot() });
      await clone.start();

      const { exit, output } = await faultClone(clone, 'write-text');

      assertPageFault(exit, WRITE_VIOLATION, targetOf(output, 'write-text'));
      assert.strictEqual(text(await parent.call('allowed')), 'ok', 'the parent still runs');
    });

    it('keeps data non-executable in a loaded file', async function () {
      const file = path.join(dir, 'wx.snap');
      await (await (await servingGuest()).snapshot()).save(file);
      const clone = vmm.createVM({ snapshot: await vmm.loadSnapshot(file) });
      await clone.start();

      const { exit, output } = await faultClone(clone, 'exec-data');

      assertPageFault(exit, FETCH_VIOLATION, targetOf(output, 'exec-data'));
      assert.strictEqual(exit.detail.rip, targetOf(output, 'exec-data'));
    });
  });
});
