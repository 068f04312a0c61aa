import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { VMExit } from '../lib/index.js';
import { captureConsole, loadGuest, requireKvm, runToExit, text } from './helpers.js';

// Guest images load at 1 MiB, above the reserved area (VMM_RESERVED_END).
const IMAGE_BASE = 0x100000;
const GUEST_RAM = 16 * 1024 * 1024;

// x86 page-fault error code bits.
const PF_PRESENT = 0x1;
const PF_WRITE = 0x2;
const PF_USER = 0x4;

const PAGE_FAULT_VECTOR = 14;

describe('guest page fault', function () {
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

  describe('on an unmapped address', function () {
    let exit: VMExit;

    beforeEach(async function () {
      const vm = vmm.createVM({ image: await loadGuest(vmm, 'test-pagefault') });
      exit = await runToExit(vm);
    });

    it('ends with reason crash', function () {
      assert.strictEqual(exit.reason, 'crash');
      assert.strictEqual(exit.code, -1);
    });

    it('reports vector 14 and cr2', function () {
      assert.strictEqual(exit.detail.vector, PAGE_FAULT_VECTOR);
      assert.strictEqual(exit.detail.cr2, '0x40000000000');
    });

    it('reports a user-mode read', function () {
      const errorCode = exit.detail.errorCode ?? -1;

      assert.isAtLeast(errorCode, 0, 'detail.errorCode is missing');
      assert.strictEqual(errorCode & PF_USER, PF_USER);
      assert.strictEqual(errorCode & PF_WRITE, 0);
      assert.strictEqual(errorCode & PF_PRESENT, 0);
    });

    it('reports rip inside the image', function () {
      assert.isString(exit.detail.rip);
      const rip = Number(exit.detail.rip);

      assert.isAtLeast(rip, IMAGE_BASE);
      assert.isBelow(rip, GUEST_RAM);
    });

    it('reports the registers', function () {
      const registers = exit.detail.registers;

      assert.isObject(registers);
      assert.strictEqual(registers?.rip, exit.detail.rip);
      assert.match(registers?.rsp ?? '', /^0x[0-9a-f]+$/);
    });

    it('names the address in the message', function () {
      assert.include(exit.detail.message, '0x40000000000');
    });

    it('names the cause in the message', function () {
      assert.include(exit.detail.message, '(read of an unmapped page)');
    });
  });

  describe('on the supervisor area', function () {
    let exit: VMExit;

    beforeEach(async function () {
      const vm = vmm.createVM({ image: await loadGuest(vmm, 'test-supervisor') });
      exit = await runToExit(vm);
    });

    it('ends with reason crash', function () {
      assert.strictEqual(exit.reason, 'crash');
      assert.strictEqual(exit.code, -1);
    });

    it('reports vector 14 and cr2', function () {
      assert.strictEqual(exit.detail.vector, PAGE_FAULT_VECTOR);
      assert.strictEqual(exit.detail.cr2, '0x2000');
    });

    it('reports a user-mode write', function () {
      const errorCode = exit.detail.errorCode ?? -1;

      assert.isAtLeast(errorCode, 0, 'detail.errorCode is missing');
      assert.strictEqual(errorCode & PF_WRITE, PF_WRITE);
      assert.strictEqual(errorCode & PF_USER, PF_USER);
    });

    it('reports a protection violation', function () {
      // 0x2000 is mapped for the supervisor only, so the page is present.
      assert.strictEqual((exit.detail.errorCode ?? 0) & PF_PRESENT, PF_PRESENT);
      assert.include(exit.detail.message, "(write denied by the page's permissions)");
    });

    it('reports rip inside the image', function () {
      const rip = Number(exit.detail.rip);

      assert.isAtLeast(rip, IMAGE_BASE);
      assert.isBelow(rip, GUEST_RAM);
    });
  });
});

describe('bad hypercall pointers', function () {
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

  // The four cases of csrc/guest/guests/test-badpointer.c; each hypercall
  // must return -EFAULT to the guest.
  const CASES = [
    'console write in reserved area',
    'console write across end of RAM',
    'console write with overflowing length',
    'random far above RAM',
  ];

  it('returns EFAULT for each case', async function () {
    const vm = vmm.createVM({ image: await loadGuest(vmm, 'test-badpointer') });
    const output = captureConsole(vm);

    await runToExit(vm);

    for (const name of CASES) {
      assert.include(output.text(), `${name}: ok\n`);
    }
    assert.notInclude(output.text(), 'unexpected');
    assert.include(output.text(), 'bad pointer cases failed: 0\n');
  });

  it('ends with reason fault', async function () {
    const vm = vmm.createVM({ image: await loadGuest(vmm, 'test-badpointer') });

    const exit = await runToExit(vm);

    assert.strictEqual(exit.reason, 'fault');
    assert.strictEqual(exit.code, -1);
    assert.include(exit.detail.message, '0x40000000000');
  });

  it('counts the failed hypercalls', async function () {
    const vm = vmm.createVM({ image: await loadGuest(vmm, 'test-badpointer') });

    await runToExit(vm);

    assert.strictEqual(vm.stats().hypercallErrors, CASES.length);
  });

  it('leaves the engine serving', async function () {
    const bad = vmm.createVM({ image: await loadGuest(vmm, 'test-badpointer') });
    await runToExit(bad);

    const vm = vmm.createVM({ image: await loadGuest(vmm, 'echo') });
    await vm.start();
    const reply = await vm.call('after the fault');

    assert.strictEqual(text(reply), 'after the fault');
  });
});
