import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { Image } from '../lib/index.js';
import { captureConsole, loadGuest, requireKvm, runToExit } from './helpers.js';

// Bytes test-flood writes: 4 MiB of letters, then "flood done" and a newline
// from vmm_puts (csrc/guest/guests/test-flood.c).
const FLOOD_BYTES = 4 * 1024 * 1024 + 'flood done\n'.length;
// Per-VM console buffer of the engine (ConsoleBuffer::kCapacity).
const CONSOLE_BUFFER_BYTES = 64 * 1024;
// Upper bound on a busy wait for the guest to finish, so that a hung guest
// fails the test instead of blocking the event loop forever.
const BUSY_WAIT_LIMIT_MS = 20000;

describe('VM console', function () {
  let vmm: VMM;
  let flood: Image;

  before(async function () {
    requireKvm(this);
    vmm = new VMM();
    flood = await loadGuest(vmm, 'test-flood');
  });

  after(async function () {
    await vmm?.close();
  });

  it('accounts for every flood byte', async function () {
    const vm = vmm.createVM({ image: flood });
    const output = captureConsole(vm);

    const exit = await runToExit(vm);
    const stats = vm.stats();

    // Exit code 0 means every console write returned its full length, so the
    // vCPU was never blocked on the full buffer.
    assert.strictEqual(exit.reason, 'exit');
    assert.strictEqual(exit.code, 0);
    assert.strictEqual(stats.consoleBytes + stats.consoleDroppedBytes, FLOOD_BYTES);
    // Kept bytes reach the listener before 'exit'; the output is ASCII, so
    // its length in characters is its length in bytes.
    assert.strictEqual(output.text().length, stats.consoleBytes);
    vm.destroy();
  });

  it('keeps only bytes the guest wrote', async function () {
    const vm = vmm.createVM({ image: flood });
    const output = captureConsole(vm);

    await runToExit(vm);

    // Dropped bytes leave no filler behind: every kept byte is a letter, a
    // newline or part of "flood done", as the guest wrote it.
    assert.match(output.text(), /^[a-z\n ]*$/);
    vm.destroy();
  });

  it('drops output while Node is blocked', async function () {
    const vm = vmm.createVM({ image: flood });
    await vm.start();

    // Block the main thread until the guest ends, so that nothing drains
    // the console buffer: at most one buffer's worth, plus what was drained
    // before start() resolved, can be kept.
    const deadline = Date.now() + BUSY_WAIT_LIMIT_MS;
    while (vm.state !== 'exited' && Date.now() < deadline) {
      // busy wait: vm.state reads the engine without yielding to the loop
    }
    const stats = vm.stats();
    const exit = await vm.wait();

    assert.strictEqual(exit.code, 0);
    assert.isAbove(stats.consoleDroppedBytes, 0);
    assert.strictEqual(stats.consoleBytes + stats.consoleDroppedBytes, FLOOD_BYTES);
    // The buffer filled up before the engine dropped anything.
    assert.isAtLeast(stats.consoleBytes, CONSOLE_BUFFER_BYTES);
    vm.destroy();
  });
});
