import { assert } from 'chai';

import { VMM, bundledGuest, listGuests, parseSize } from '../lib/index.js';
import type { CreateVMOptions, Image, VMMOptions } from '../lib/index.js';
import { errorOf, loadGuest, requireKvm } from './helpers.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** An invalid option value, the error it must raise and the text after "Received" in its message. */
interface InvalidCase {
  value: unknown;
  errorClass: typeof TypeError | typeof RangeError;
  code: string;
  received: string;
}

describe('new VMM()', function () {
  const invalid: Array<{ options: unknown; name: string } & InvalidCase> = [
    { options: { workers: 0 }, name: 'workers', value: 0, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: '0' },
    { options: { workers: 1.5 }, name: 'workers', value: 1.5, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: '1.5' },
    { options: { workers: 'x' }, name: 'workers', value: 'x', errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE', received: "'x'" },
    { options: { workers: 257 }, name: 'workers', value: 257, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: '257' },
    { options: { workers: NaN }, name: 'workers', value: NaN, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: 'NaN' },
    { options: { sliceMs: 0 }, name: 'sliceMs', value: 0, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: '0' },
    { options: { sliceMs: '10' }, name: 'sliceMs', value: '10', errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE', received: "'10'" },
    { options: null, name: 'options', value: null, errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE', received: 'null' },
    { options: 4, name: 'options', value: 4, errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE', received: '4' },
  ];

  // These checks run before /dev/kvm is opened, so they need no KVM.
  for (const { options, name, errorClass, code, received } of invalid) {
    it(`rejects ${name} ${received}`, function () {
      const err = errorOf(() => new VMM(options as VMMOptions));

      assert.instanceOf(err, errorClass);
      assert.strictEqual(err.code, code);
      assert.include(err.message, `"${name}"`);
      assert.include(err.message, `Received ${received}`);
    });
  }

  it('rejects an unknown option', function () {
    const err = errorOf(() => new VMM({ poolsize: 4 } as VMMOptions));

    assert.instanceOf(err, TypeError);
    assert.strictEqual(err.code, 'ERR_INVALID_ARG_VALUE');
    assert.include(err.message, '"poolsize"');
    assert.include(err.message, 'poolSize');
  });

  describe('with KVM', function () {
    const vmms: VMM[] = [];

    before(function () {
      requireKvm(this);
    });

    afterEach(async function () {
      await Promise.all(vmms.splice(0).map((vmm) => vmm.close()));
    });

    it('accepts one worker', function () {
      const vmm = new VMM({ workers: 1, sliceMs: 1 });
      vmms.push(vmm);

      assert.strictEqual(vmm.options.workers, 1);
      assert.strictEqual(vmm.options.sliceMs, 1);
    });

    it('fills in the defaults', function () {
      const vmm = new VMM();
      vmms.push(vmm);

      assert.isAtLeast(vmm.options.workers, 1);
      assert.strictEqual(vmm.options.sliceMs, 10);
    });
  });
});

describe('VMM#createVM() options', function () {
  let vmm: VMM;
  let hello: Image;

  before(async function () {
    requireKvm(this);
    vmm = new VMM();
    hello = await loadGuest(vmm, 'hello');
  });

  after(async function () {
    await vmm?.close();
  });

  function createError(options: Partial<CreateVMOptions>): ReturnType<typeof errorOf> {
    return errorOf(() => vmm.createVM({ image: hello, ...options } as CreateVMOptions));
  }

  it('rejects an unknown option', function () {
    const err = createError({ memroy: '32M' } as Partial<CreateVMOptions>);

    assert.instanceOf(err, TypeError);
    assert.strictEqual(err.code, 'ERR_INVALID_ARG_VALUE');
    assert.include(err.message, '"memroy"');
  });

  describe('memory', function () {
    const invalid: InvalidCase[] = [
      { value: '3M', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: "'3M'" },
      { value: 5 * MiB, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: String(5 * MiB) },
      { value: '2M', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: "'2M'" },
      { value: '4G', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: "'4G'" },
      { value: 3 * GiB + 2 * MiB, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: String(3 * GiB + 2 * MiB) },
      { value: 0, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: '0' },
      { value: -1, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: '-1' },
      { value: 16.5 * MiB, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: String(16.5 * MiB) },
      { value: 'abc', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: "'abc'" },
      { value: {}, errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE', received: 'an instance of Object' },
      { value: null, errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE', received: 'null' },
    ];

    for (const { value, errorClass, code, received } of invalid) {
      it(`rejects ${received}`, function () {
        const err = createError({ memory: value as number });

        assert.instanceOf(err, errorClass);
        assert.strictEqual(err.code, code);
        assert.include(err.message, '"memory"');
        assert.include(err.message, `Received ${received}`);
      });
    }

    const valid: Array<[value: number | string, bytes: number]> = [
      ['4M', 4 * MiB],
      ['64MiB', 64 * MiB],
      [6 * MiB, 6 * MiB],
      ['3G', 3 * GiB],
    ];
    for (const [value, bytes] of valid) {
      it(`accepts ${JSON.stringify(value)}`, function () {
        const vm = vmm.createVM({ image: hello, memory: value });

        assert.strictEqual(vm.stats().memoryBytes, bytes);
        vm.destroy();
      });
    }

    it('defaults to 16 MiB', function () {
      const vm = vmm.createVM({ image: hello });

      assert.strictEqual(vm.stats().memoryBytes, 16 * MiB);
      vm.destroy();
    });

    it('rejects memory below the image', async function () {
      // test-share carries a 4 MiB array, so 4 MiB cannot also hold the stack.
      const share = await loadGuest(vmm, 'test-share');

      const err = errorOf(() => vmm.createVM({ image: share, memory: '4M' }));

      assert.instanceOf(err, RangeError);
      assert.strictEqual(err.code, 'ERR_OUT_OF_RANGE');
      assert.include(err.message, '"memory"');
      assert.include(err.message, `at least ${share.memoryNeeded / MiB} MiB`);
    });
  });

  describe('cmdline', function () {
    it('rejects 2048 bytes', function () {
      const err = createError({ cmdline: 'c'.repeat(2048) });

      assert.instanceOf(err, RangeError);
      assert.strictEqual(err.code, 'ERR_OUT_OF_RANGE');
      assert.include(err.message, '"cmdline"');
      assert.include(err.message, '2048');
    });

    it('accepts 2047 bytes', function () {
      const vm = vmm.createVM({ image: hello, cmdline: 'c'.repeat(2047) });

      assert.strictEqual(vm.state, 'created');
      vm.destroy();
    });

    it('counts the limit in UTF-8 bytes', function () {
      // 1024 characters of 2 bytes each: 2048 bytes.
      const err = createError({ cmdline: 'é'.repeat(1024) });

      assert.instanceOf(err, RangeError);
      assert.strictEqual(err.code, 'ERR_OUT_OF_RANGE');
    });

    it('rejects a NUL character', function () {
      const err = createError({ cmdline: 'a\0b' });

      assert.instanceOf(err, RangeError);
      assert.strictEqual(err.code, 'ERR_OUT_OF_RANGE');
      assert.include(err.message, '"cmdline"');
    });

    it('rejects a number', function () {
      const err = createError({ cmdline: 42 as unknown as string });

      assert.instanceOf(err, TypeError);
      assert.strictEqual(err.code, 'ERR_INVALID_ARG_TYPE');
      assert.include(err.message, '"cmdline"');
      assert.include(err.message, 'Received 42');
    });
  });

  describe('image', function () {
    it('rejects a plain object', function () {
      const err = errorOf(() => vmm.createVM({ image: {} as Image }));

      assert.instanceOf(err, TypeError);
      assert.strictEqual(err.code, 'ERR_INVALID_ARG_TYPE');
      assert.include(err.message, '"image"');
      assert.include(err.message, 'Received an instance of Object');
    });

    it('rejects a missing image', function () {
      const err = errorOf(() => vmm.createVM({} as CreateVMOptions));

      assert.instanceOf(err, TypeError);
      assert.strictEqual(err.code, 'ERR_INVALID_ARG_TYPE');
      assert.include(err.message, '"image"');
    });

    it('rejects missing options', function () {
      const err = errorOf(() => vmm.createVM(undefined as unknown as CreateVMOptions));

      assert.instanceOf(err, TypeError);
      assert.strictEqual(err.code, 'ERR_INVALID_ARG_TYPE');
      assert.include(err.message, '"options"');
    });
  });
});

/** Formats a parseSize() input for a test name. */
function inputLabel(input: unknown): string {
  if (typeof input === 'string') return `'${input}'`;
  if (typeof input === 'bigint') return `${input}n`;
  return String(input);
}

describe('parseSize()', function () {
  const valid: Array<[input: number | string, bytes: number]> = [
    ['16M', 16 * MiB],
    ['1GiB', GiB],
    ['512k', 512 * 1024],
    ['64mib', 64 * MiB],
    ['2G', 2 * GiB],
    ['4096', 4096],
    [' 8 MiB ', 8 * MiB],
    [0, 0],
    [12345, 12345],
  ];
  for (const [input, bytes] of valid) {
    it(`parses ${JSON.stringify(input)} as ${bytes}`, function () {
      assert.strictEqual(parseSize('size', input), bytes);
    });
  }

  const invalid: Array<{ input: unknown } & Omit<InvalidCase, 'value' | 'received'>> = [
    { input: '1.5M', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE' },
    { input: '-1M', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE' },
    { input: '16X', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE' },
    { input: '16MB', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE' },
    { input: '', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE' },
    { input: '9007199254740993G', errorClass: RangeError, code: 'ERR_OUT_OF_RANGE' },
    { input: -1, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE' },
    { input: 1.5, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE' },
    { input: Infinity, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE' },
    { input: 16n, errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE' },
    { input: undefined, errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE' },
  ];
  for (const { input, errorClass, code } of invalid) {
    it(`rejects ${inputLabel(input)}`, function () {
      const err = errorOf(() => parseSize('size', input));

      assert.instanceOf(err, errorClass);
      assert.strictEqual(err.code, code);
      assert.include(err.message, '"size"');
    });
  }
});

describe('bundledGuest()', function () {
  it('returns a path listed by listGuests()', function () {
    const listed = listGuests().find((guest) => guest.name === 'hello');

    assert.isDefined(listed);
    assert.strictEqual(bundledGuest('hello'), listed?.path);
  });

  it('rejects an unknown name', function () {
    const err = errorOf(() => bundledGuest('no-such-guest'));

    assert.instanceOf(err, RangeError);
    assert.strictEqual(err.code, 'ERR_OUT_OF_RANGE');
    assert.include(err.message, 'no-such-guest');
  });

  it('rejects a path outside the guest directory', function () {
    const err = errorOf(() => bundledGuest('../hello'));

    assert.instanceOf(err, RangeError);
    assert.strictEqual(err.code, 'ERR_OUT_OF_RANGE');
  });

  it('still resolves a test guest', function () {
    assert.match(bundledGuest('test-spin'), /test-spin\.elf$/);
  });

  it('suggests no test guests', function () {
    const err = errorOf(() => bundledGuest('no-such-guest'));

    assert.include(err.message, 'available: counter, echo, hello');
    assert.notInclude(err.message, 'test-');
  });
});

describe('listGuests()', function () {
  it('lists the user guests only', function () {
    assert.deepEqual(
      listGuests().map((guest) => guest.name),
      ['counter', 'echo', 'hello'],
    );
  });

  it('describes each user guest', function () {
    for (const guest of listGuests()) {
      assert.isNotEmpty(guest.description, `no description for ${guest.name}`);
    }
  });
});
