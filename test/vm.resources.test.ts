import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { Image, VM, VMExit } from '../lib/index.js';
import { collectGarbage, consoleContains, loadGuest, openFdCount, requireKvm, rssBytes, sleep } from './helpers.js';

const MiB = 1024 * 1024;

const CYCLES = 1000;
const BATCH = 50;

// RSS growth allowed over CYCLES create-start-call-destroy cycles. A started
// counter VM adds about 100 KiB of RSS (its written pages plus the image pages
// its mapping counts), so 1000 VMs that kept their guest memory would add
// about 100 MiB. Without a leak, these steps grew RSS by 6-8 MiB on a 2-core
// x86-64 VM with nested KVM, about as much as V8's heapTotal grew.
const RSS_GROWTH_LIMIT = 32 * MiB;

// Rounds of garbage collection to wait for a FinalizationRegistry callback,
// which V8 runs in a task after the collection that found the object dead.
const GC_ROUNDS = 20;

/**
 * Collects garbage and lets the deferred finalizers run: Node-API objects
 * left by earlier tests, such as images, close their fds in a later task.
 */
async function settleGarbage(): Promise<void> {
  for (let round = 0; round < 3; round++) {
    collectGarbage();
    await sleep(10);
  }
}

/** Runs garbage collections until `done()` returns true or GC_ROUNDS have passed. */
async function collectUntil(done: () => boolean): Promise<void> {
  for (let round = 0; round < GC_ROUNDS && !done(); round++) {
    collectGarbage();
    await sleep(10);
  }
}

describe('VM resources', function () {
  let vmm: VMM;
  let counter: Image;
  let spin: Image;
  const extraVMMs: VMM[] = [];

  before(function () {
    requireKvm(this);
  });

  beforeEach(async function () {
    vmm = new VMM();
    counter = await loadGuest(vmm, 'counter');
    spin = await loadGuest(vmm, 'test-spin');
    // The first start of an image builds its layout for 16 MiB, a memfd that
    // stays open as long as the image, so fd baselines come after it.
    for (const image of [counter, spin]) {
      const warmUp = vmm.createVM({ image });
      await warmUp.start();
      warmUp.destroy();
    }
  });

  afterEach(async function () {
    await vmm?.close();
    await Promise.all(extraVMMs.splice(0).map((extra) => extra.close()));
  });

  /** Creates, starts, calls and destroys `count` counter VMs, BATCH at a time. */
  async function cycle(engine: VMM, count: number): Promise<void> {
    for (let done = 0; done < count; done += BATCH) {
      const vms = Array.from({ length: Math.min(BATCH, count - done) }, () => engine.createVM({ image: counter }));
      await Promise.all(
        vms.map(async (vm) => {
          await vm.start();
          await vm.call('cycle');
          vm.destroy();
        }),
      );
    }
  }

  it('releases fds and memory over 1000 VMs', async function () {
    await settleGarbage();
    const fdsBefore = openFdCount();
    const cycler = new VMM();
    extraVMMs.push(cycler);

    // The first cycles grow the V8 heap to its working size and put KVM
    // contexts into the engine's reuse pool, so the RSS baseline comes after
    // them. The pool keeps the fds of ended VMs open, so fds are compared
    // once the VMM is closed.
    await cycle(cycler, 2 * BATCH);
    await settleGarbage();
    const rssBefore = rssBytes();
    await cycle(cycler, CYCLES);
    await settleGarbage();
    const growth = rssBytes() - rssBefore;
    const vmsLeft = cycler.size;
    await cycler.close();
    await settleGarbage();

    assert.isBelow(growth, RSS_GROWTH_LIMIT, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    assert.strictEqual(vmsLeft, 0);
    assert.strictEqual(openFdCount(), fdsBefore);
  });

  it('closes every KVM fd on close()', async function () {
    await settleGarbage();
    const fdsBefore = openFdCount();
    const closing = new VMM();
    extraVMMs.push(closing);

    // One VM in each state at close(): spinning, waiting for a message,
    // exited (its context pooled) and never started.
    const spinner = closing.createVM({ image: spin });
    const spinning = consoleContains(spinner, 'spinning');
    await spinner.start();
    await spinning;
    const waiting = closing.createVM({ image: counter });
    await waiting.start();
    await waiting.call('served');
    const exited = closing.createVM({ image: counter });
    await exited.start();
    await exited.kill();
    closing.createVM({ image: counter });
    const fdsOpen = openFdCount();

    await closing.close();
    await settleGarbage();

    assert.isAbove(fdsOpen, fdsBefore);
    assert.strictEqual(openFdCount(), fdsBefore);
  });
});

describe('VM garbage collection', function () {
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

  it('frees a dropped exited VM', async function () {
    const hello = await loadGuest(vmm, 'hello');
    // Only this function references the VM; it has exited when it returns.
    await (async () => {
      const vm = vmm.createVM({ image: hello });
      await vm.start();
      await vm.wait();
    })();
    await collectUntil(() => vmm.size === 0);

    assert.strictEqual(vmm.size, 0, 'the dropped VM was not collected');
    assert.strictEqual(vmm.stats().vms, 0, 'the engine still holds the VM record');
  });

  it('keeps a dropped waiting VM', async function () {
    // A started VM goes on until it exits or is destroyed, like a child
    // process, so dropping the last reference to a waiting VM keeps it.
    const counter = await loadGuest(vmm, 'counter');
    await (async () => {
      const vm = vmm.createVM({ image: counter });
      await vm.start();
      await vm.call('last call');
    })();
    await collectGarbage();
    await collectGarbage();

    // Waiting, or hibernated if the garbage collection took longer than
    // the idle time: either way still alive.
    const stats = vmm.stats();
    assert.strictEqual(vmm.size, 1);
    assert.strictEqual(stats.waiting + stats.hibernated, 1);
  });

  it('keeps an unreferenced running VM', async function () {
    // A started VM keeps the event loop alive the way a listening server
    // does, so its 'exit' listener must still run when the program keeps no
    // reference to the VM object, as with a server.
    const exits: VMExit[] = [];
    const ref = await (async () => {
      const vm: VM = vmm.createVM({ image: await loadGuest(vmm, 'test-spin') });
      vm.on('exit', (exit) => exits.push(exit));
      const spinning = consoleContains(vm, 'spinning');
      await vm.start();
      await spinning;
      return new WeakRef(vm);
    })();

    // vmm.size drops when the finalizer runs. Calling ref.deref() here would
    // keep the VM alive until the end of the current job.
    await collectUntil(() => vmm.size === 0);
    const vm = ref.deref();

    assert.isDefined(vm, 'the running VM was collected, so its exit event is lost');
    assert.strictEqual(vmm.size, 1);
    await vm?.kill();
    assert.lengthOf(exits, 1);
  });
});
