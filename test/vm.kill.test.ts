import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { Image, VM, VMExit } from '../lib/index.js';
import { consoleContains, loadGuest, requireKvm, settleWithin } from './helpers.js';

// The one timing bound of the suite: VM#kill() documents that a running vCPU
// is interrupted within milliseconds, and a kill that needs 100 ms has missed
// the signal and waited for a watchdog retry or worse.
const KILL_BOUND_MS = 100;
// Far longer than a kill takes (milliseconds), yet short enough that a kill
// that never completes fails fast.
const SETTLE_MS = 2000;

describe('VM#kill()', function () {
  let vmm: VMM;
  let spinImage: Image;
  let counterImage: Image;

  before(async function () {
    requireKvm(this);
    vmm = new VMM();
    spinImage = await loadGuest(vmm, 'test-spin');
    counterImage = await loadGuest(vmm, 'counter');
  });

  after(async function () {
    await vmm?.close();
  });

  /** Starts test-spin and resolves once the guest printed "spinning". */
  async function spinningVM(): Promise<VM> {
    const vm = vmm.createVM({ image: spinImage });
    const spinning = consoleContains(vm, 'spinning');
    await vm.start();
    await spinning;
    return vm;
  }

  it('stops a spinning guest within 100 ms', async function () {
    const vm = await spinningVM();
    const exitEvent = new Promise<{ exit: VMExit; at: bigint }>((resolve) => {
      vm.once('exit', (exit) => resolve({ exit, at: process.hrtime.bigint() }));
    });

    const killedAt = process.hrtime.bigint();
    void vm.kill();
    const { exit, at } = await exitEvent;

    const elapsedMs = Number(at - killedAt) / 1e6;
    assert.strictEqual(exit.reason, 'killed');
    assert.strictEqual(exit.code, -1);
    assert.isBelow(elapsedMs, KILL_BOUND_MS, `kill took ${elapsedMs.toFixed(1)} ms`);
    vm.destroy();
  });

  it('is idempotent', async function () {
    const vm = await spinningVM();

    const [first, second] = await Promise.all([vm.kill(), vm.kill()]);
    const third = await vm.kill();

    assert.strictEqual(first.reason, 'killed');
    assert.strictEqual(second, first);
    assert.strictEqual(third, first);
    assert.strictEqual(vm.state, 'exited');
    vm.destroy();
  });

  it('emits exit once', async function () {
    const vm = await spinningVM();
    const events: VMExit[] = [];
    vm.on('exit', (exit) => events.push(exit));

    await vm.kill();
    await vm.kill();

    assert.lengthOf(events, 1);
    vm.destroy();
  });

  it('stops a guest waiting for a message', async function () {
    const vm = vmm.createVM({ image: counterImage });
    await vm.start();
    await vm.call('served');

    const exit = await vm.kill();

    assert.strictEqual(exit.reason, 'killed');
    assert.strictEqual(vm.state, 'exited');
    vm.destroy();
  });

  it('stops a VM that was never started', async function () {
    const vm = vmm.createVM({ image: counterImage });

    const exit = await vm.kill();

    assert.strictEqual(exit.reason, 'killed');
    assert.strictEqual(vm.state, 'exited');
    vm.destroy();
  });

  it('stops a VM while it starts', async function () {
    const vm = vmm.createVM({ image: spinImage });
    const starting = vm.start();

    const exit = await vm.kill();
    await starting;

    assert.strictEqual(exit.reason, 'killed');
    vm.destroy();
  });

  it('stops VMs right after their replies', async function () {
    // A kill that arrives while the guest goes from its reply back into its
    // wait for the next message must still end the VM. 50 VMs at once make
    // that window likely for some of them.
    const vms = Array.from({ length: 50 }, () => vmm.createVM({ image: counterImage }));

    const settlements = await Promise.all(
      vms.map(async (vm) => {
        await vm.start();
        await vm.call('last');
        return settleWithin(vm.kill(), SETTLE_MS);
      }),
    );

    const unfinished = vms.filter((_, i) => settlements[i].status !== 'resolved');
    assert.deepStrictEqual(
      unfinished.map((vm) => `VM ${vm.id}: ${vm.state}`),
      [],
      'kill() never completed for these VMs',
    );
    for (const vm of vms) vm.destroy();
  });

  it('leaves other VMs running', async function () {
    const victim = await spinningVM();
    const bystander = vmm.createVM({ image: counterImage });
    await bystander.start();

    await victim.kill();
    const reply = await bystander.call('still serving');

    assert.include(new TextDecoder().decode(reply), '"payload":"still serving"');
    victim.destroy();
    bystander.destroy();
  });
});
