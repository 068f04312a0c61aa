import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { Image, VM, VMExit, VMMOptions } from '../lib/index.js';
import { consoleContains, errorOf, loadGuest, parseCounter, requireKvm } from './helpers.js';

// The one timing bound of the suite, as in vm.kill.test.ts. VM#kill()
// documents that a running vCPU is interrupted within milliseconds.
const KILL_BOUND_MS = 100;

// Compiled tests run from dist/test; the library they load is dist/lib.
const LIBRARY = path.resolve(__dirname, '..', 'lib', 'index.js');

// Time a child process gets to exit before it counts as hung.
const CHILD_LIMIT_MS = 10000;

/** Soft and hard RLIMIT_NOFILE from a /proc/<pid>/limits text. */
interface FileLimits {
  soft: number;
  hard: number;
}

/** Reads the "Max open files" line of a /proc/<pid>/limits text. */
function parseFileLimits(limits: string): FileLimits {
  const match = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(limits);
  if (!match) throw new Error(`no "Max open files" line in:\n${limits}`);
  const value = (field: string): number => (field === 'unlimited' ? Infinity : Number(field));
  return { soft: value(match[1]), hard: value(match[2]) };
}

/** Returns true when an executable named `name` is in a directory on PATH. */
function isOnPath(name: string): boolean {
  return (process.env.PATH ?? '')
    .split(path.delimiter)
    .some((dir) => dir !== '' && fs.existsSync(path.join(dir, name)));
}

/** Runs `script` in a new node process and resolves with its exit code and output. */
function runChild(script: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const prelude = `const { VMM } = require(${JSON.stringify(LIBRARY)});\n`;
    const child = spawn(process.execPath, ['-e', prelude + script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_LIMIT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('scheduling', function () {
  let vmm: VMM | undefined;
  let spinImage: Image;
  let counterImage: Image;

  before(function () {
    requireKvm(this);
  });

  afterEach(async function () {
    await vmm?.close();
    vmm = undefined;
  });

  async function openVMM(options: VMMOptions): Promise<VMM> {
    vmm = new VMM(options);
    spinImage = await loadGuest(vmm, 'test-spin');
    counterImage = await loadGuest(vmm, 'counter');
    return vmm;
  }

  /** Starts test-spin and resolves once the guest printed "spinning". */
  async function spinningVM(engine: VMM): Promise<VM> {
    const vm = engine.createVM({ image: spinImage });
    const spinning = consoleContains(vm, 'spinning');
    await vm.start();
    await spinning;
    return vm;
  }

  /** Kills every VM and returns their exits and the time until the last exit event, in ms. */
  async function killAll(vms: VM[]): Promise<{ exits: VMExit[]; elapsedMs: number }> {
    const started = process.hrtime.bigint();
    const exits = await Promise.all(vms.map((vm) => vm.kill()));
    return { exits, elapsedMs: Number(process.hrtime.bigint() - started) / 1e6 };
  }

  for (const spinners of [1, 2]) {
    it(`serves 1,000 calls beside ${spinners} spinning VM${spinners > 1 ? 's' : ''}`, async function () {
      this.timeout(60000);
      const VM_COUNT = 20;
      const CALLS_PER_VM = 50;
      const engine = await openVMM({ workers: 2 });
      const spinning: VM[] = [];
      for (let i = 0; i < spinners; i++) spinning.push(await spinningVM(engine));

      const counters: VM[] = [];
      for (let i = 0; i < VM_COUNT; i++) {
        const vm = engine.createVM({ image: counterImage });
        await vm.start();
        counters.push(vm);
      }
      // Each VM gets its calls one after another, so every call queues the
      // VM for a worker again.
      const counts = await Promise.all(
        counters.map(async (vm) => {
          const seen: number[] = [];
          for (let call = 0; call < CALLS_PER_VM; call++) {
            const reply = parseCounter(await vm.call(`call ${call}`));
            assert.strictEqual(reply.id, vm.id);
            seen.push(reply.count);
          }
          return seen;
        }),
      );

      const replies = counts.reduce((total, seen) => total + seen.length, 0);
      assert.strictEqual(replies, VM_COUNT * CALLS_PER_VM);
      const expected = Array.from({ length: CALLS_PER_VM }, (_, i) => i + 1);
      counts.forEach((seen, index) => assert.deepStrictEqual(seen, expected, `counts of VM ${counters[index].id}`));
      assert.deepStrictEqual(
        spinning.map((vm) => vm.state),
        spinning.map(() => 'running'),
        'the spinners still run',
      );

      const { exits, elapsedMs } = await killAll(spinning);
      assert.deepStrictEqual(
        exits.map((exit) => exit.reason),
        spinning.map(() => 'killed'),
      );
      assert.isBelow(elapsedMs, KILL_BOUND_MS, `killing the spinners took ${elapsedMs.toFixed(1)} ms`);
    });
  }

  it('preempts a spinner on one worker', async function () {
    this.timeout(60000);
    const engine = await openVMM({ workers: 1 });
    const spinner = await spinningVM(engine);

    // The only worker runs the spinner, so the counter boots and serves its
    // calls only because time slices preempt the spinner.
    const counter = engine.createVM({ image: counterImage });
    await counter.start();
    const counts: number[] = [];
    for (let call = 0; call < 20; call++) counts.push(parseCounter(await counter.call(`call ${call}`)).count);

    assert.deepStrictEqual(
      counts,
      Array.from({ length: 20 }, (_, i) => i + 1),
    );
    assert.strictEqual(spinner.state, 'running');
    const { exits, elapsedMs } = await killAll([spinner]);
    assert.strictEqual(exits[0].reason, 'killed');
    assert.isBelow(elapsedMs, KILL_BOUND_MS, `killing the spinner took ${elapsedMs.toFixed(1)} ms`);
  });
});

describe('RLIMIT_NOFILE', function () {
  before(function () {
    requireKvm(this);
  });

  it('raises the soft limit to the hard one', async function () {
    // Node raises the soft limit to the hard one itself at startup, so a
    // limit lowered before node starts (ulimit -Sn) is gone before any VMM
    // exists. The child lowers its own soft limit with prlimit(1) instead,
    // checks that it took, and then creates a VMM.
    if (!isOnPath('prlimit')) {
      console.log('      skipped: prlimit (util-linux) is not on PATH');
      this.skip();
    }
    const hard = parseFileLimits(fs.readFileSync('/proc/self/limits', 'utf8')).hard;
    if (!Number.isFinite(hard) || hard <= 64) {
      console.log(`      skipped: the hard RLIMIT_NOFILE (${hard}) leaves no lower soft limit to test`);
      this.skip();
    }
    const lowered = Math.min(1024, Math.floor(hard / 2));

    const result = await runChild(`
      const { execFileSync } = require('node:child_process');
      const fs = require('node:fs');
      const limits = () => fs.readFileSync('/proc/self/limits', 'utf8');
      execFileSync('prlimit', ['--pid', String(process.pid), '--nofile=${lowered}:']);
      const before = limits();
      const vmm = new VMM();
      const after = limits();
      vmm.close().then(() => console.log(JSON.stringify({ before, after })));
    `);

    assert.strictEqual(result.code, 0, `the child failed: ${result.stderr}`);
    const { before, after } = JSON.parse(result.stdout) as { before: string; after: string };
    assert.deepStrictEqual(parseFileLimits(before), { soft: lowered, hard }, 'prlimit lowered the soft limit');
    assert.deepStrictEqual(parseFileLimits(after), { soft: hard, hard });
  });

  it('caps contexts by a low descriptor limit', async function () {
    // At two descriptors per KVM context, with 256 kept for the rest of the
    // process, a hard limit of 512 leaves room for 128 contexts.
    if (!isOnPath('prlimit')) {
      console.log('      skipped: prlimit (util-linux) is not on PATH');
      this.skip();
    }

    const result = await runChild(`
      const { execFileSync } = require('node:child_process');
      execFileSync('prlimit', ['--pid', String(process.pid), '--nofile=512:512']);
      const vmm = new VMM();
      const cap = vmm.stats().maxResident;
      vmm.close().then(() => console.log(JSON.stringify({ cap })));
    `);

    assert.strictEqual(result.code, 0, `the child failed: ${result.stderr}`);
    const { cap } = JSON.parse(result.stdout) as { cap: number };
    assert.isAtLeast(cap, 4);
    assert.isAtMost(cap, 128);
  });
});

describe('new VMM() hibernation options', function () {
  const invalid: Array<{ value: unknown; errorClass: typeof TypeError | typeof RangeError; code: string; received: string }> = [
    { value: -1, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: '-1' },
    { value: 1.5, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: '1.5' },
    { value: 'x', errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE', received: "'x'" },
    { value: NaN, errorClass: RangeError, code: 'ERR_OUT_OF_RANGE', received: 'NaN' },
    { value: null, errorClass: TypeError, code: 'ERR_INVALID_ARG_TYPE', received: 'null' },
  ];

  // These checks run before /dev/kvm is opened, so they need no KVM.
  for (const name of ['maxResident', 'idleMs'] as const) {
    for (const { value, errorClass, code, received } of invalid) {
      it(`rejects ${name} ${received}`, function () {
        const err = errorOf(() => new VMM({ [name]: value } as VMMOptions));

        assert.instanceOf(err, errorClass);
        assert.strictEqual(err.code, code);
        assert.include(err.message, `"${name}"`);
        assert.include(err.message, `Received ${received}`);
      });
    }
  }

  it('rejects maxResident above 100000', function () {
    const err = errorOf(() => new VMM({ maxResident: 100001 }));

    assert.instanceOf(err, RangeError);
    assert.include(err.message, '"maxResident"');
  });

  it('rejects idleMs above one day', function () {
    const err = errorOf(() => new VMM({ idleMs: 86400001 }));

    assert.instanceOf(err, RangeError);
    assert.include(err.message, '"idleMs"');
  });

  describe('with KVM', function () {
    let vmm: VMM | undefined;

    before(function () {
      requireKvm(this);
    });

    afterEach(async function () {
      await vmm?.close();
      vmm = undefined;
    });

    it('fills in the defaults', function () {
      vmm = new VMM();

      assert.strictEqual(vmm.options.idleMs, 250);
      assert.strictEqual(vmm.options.maxResident, 0, 'the option keeps 0: the engine picks the cap');
      assert.isAtLeast(vmm.stats().maxResident, 4);
      assert.isAtMost(vmm.stats().maxResident, 256);
    });

    it('scales the default cap with workers', function () {
      vmm = new VMM({ workers: 1 });

      assert.isAtLeast(vmm.stats().maxResident, 4);
      assert.isAtMost(vmm.stats().maxResident, 32, '32 contexts per worker');
    });

    it('applies a given maxResident', function () {
      vmm = new VMM({ maxResident: 7, idleMs: 0 });

      assert.strictEqual(vmm.options.maxResident, 7);
      assert.strictEqual(vmm.options.idleMs, 0);
      assert.strictEqual(vmm.stats().maxResident, 7);
    });
  });
});
