import { assert } from 'chai';

import { VMM, runDensity } from '../lib/index.js';
import type { Image, Snapshot, VM, VMMStats, VMState } from '../lib/index.js';
import { loadGuest, parseCounter, requireKvm, settleWithin, sleep, text } from './helpers.js';

const MiB = 1024 * 1024;

// Maximum wait for a state the engine reaches on its own, such as idle
// hibernation after an idleMs of 1 to 20 ms. It is far above what that
// takes, so only a VM that never gets there fails.
const STATE_LIMIT_MS = 5000;
const POLL_MS = 2;

// Far longer than a kill takes (milliseconds), yet short enough that a kill
// that never completes fails fast.
const SETTLE_MS = 2000;

/** Polls until the VM is in `state`, and fails with its last state after `limitMs`. */
async function waitForState(vm: VM, state: VMState, limitMs = STATE_LIMIT_MS): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (vm.state !== state) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${limitMs} ms waiting for VM ${vm.id} to be ${state}. It is ${vm.state}.`);
    }
    await sleep(POLL_MS);
  }
}

/** Polls until the VM waits for a message, with or without its KVM context. */
async function waitUntilParked(vm: VM, limitMs = STATE_LIMIT_MS): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (vm.state !== 'waiting' && vm.state !== 'hibernated') {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${limitMs} ms waiting for VM ${vm.id} to wait. It is ${vm.state}.`);
    }
    await sleep(POLL_MS);
  }
}

/** Polls `vmm.stats()` until `done` accepts it, and fails with the last stats after `limitMs`. */
async function waitForStats(
  vmm: VMM,
  done: (stats: VMMStats) => boolean,
  expected: string,
  limitMs = STATE_LIMIT_MS,
): Promise<VMMStats> {
  const deadline = Date.now() + limitMs;
  let stats = vmm.stats();
  while (!done(stats)) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${limitMs} ms waiting for ${expected}. Last stats: ${JSON.stringify(stats)}`);
    }
    await sleep(POLL_MS);
    stats = vmm.stats();
  }
  return stats;
}

/** Busy-waits on the main thread, for delays finer than a timer's millisecond. */
function spinMicroseconds(us: number): void {
  const end = process.hrtime.bigint() + BigInt(Math.round(us * 1000));
  while (process.hrtime.bigint() < end) {
    // Burns time on purpose: the engine's worker threads keep running.
  }
}

function sum(values: number[]): number {
  return values.reduce((total, value) => total + value, 0);
}

/**
 * Snapshots a counter VM that has served no call and waits for its first
 * message, so each clone replies with count 1 first. Destroys the template.
 */
async function counterSnapshot(vmm: VMM, image: Image): Promise<Snapshot> {
  const template = vmm.createVM({ image });
  await template.start();
  const deadline = Date.now() + STATE_LIMIT_MS;
  while (template.state !== 'waiting' && template.state !== 'hibernated') {
    if (Date.now() > deadline) throw new Error(`the counter template never waited for a message. It is ${template.state}.`);
    await sleep(POLL_MS);
  }
  const snapshot = await template.snapshot();
  template.destroy();
  return snapshot;
}

/** Starts a clone of `snapshot`. */
async function startClone(vmm: VMM, snapshot: Snapshot): Promise<VM> {
  const clone = vmm.createVM({ snapshot });
  await clone.start();
  return clone;
}

describe('hibernation', function () {
  let vmm: VMM | undefined;
  let counterImage: Image;

  before(function () {
    requireKvm(this);
  });

  afterEach(async function () {
    await vmm?.close();
    vmm = undefined;
  });

  /** Opens a VMM with `options` for this test, closed after it, and loads the counter guest. */
  async function openVMM(options: ConstructorParameters<typeof VMM>[0]): Promise<VMM> {
    vmm = new VMM(options);
    counterImage = await loadGuest(vmm, 'counter');
    return vmm;
  }

  describe('idle hibernation', function () {
    it('reports the stored bytes as private', async function () {
      const engine = await openVMM({ idleMs: 20 });
      const vm = engine.createVM({ image: counterImage });
      await vm.start();
      await vm.call('one');
      await waitForState(vm, 'hibernated');

      const memory = vm.memoryStats();
      const stats = engine.stats();

      assert.isAbove(memory.privateBytes, 0, 'a hibernated VM still holds its written pages');
      assert.isAtMost(memory.privateBytes, stats.pageStoreBytes);
      assert.strictEqual(memory.sharedBytes, 0);
    });

    it('keeps the count over 30 cycles', async function () {
      const engine = await openVMM({ idleMs: 20 });
      const vm = engine.createVM({ image: counterImage });
      await vm.start();
      await waitForState(vm, 'hibernated');

      for (let round = 1; round <= 30; round++) {
        const before = engine.stats();
        const reply = parseCounter(await vm.call(`round ${round}`));
        await waitForState(vm, 'hibernated');
        const after = engine.stats();

        assert.deepStrictEqual(reply, { id: vm.id, count: round, payload: `round ${round}` }, `round ${round}`);
        assert.strictEqual(after.wakes - before.wakes, 1, `wakes in round ${round}`);
        assert.strictEqual(after.hibernations - before.hibernations, 1, `hibernations in round ${round}`);
      }

      const stats = engine.stats();
      assert.strictEqual(stats.hibernations, 31, 'one after start, one after each call');
      assert.strictEqual(stats.wakes, 30);
      assert.lengthOf(stats.wakeHistogram, 24);
      assert.strictEqual(sum(stats.wakeHistogram), stats.wakes, 'every wake is in one histogram bucket');
      assert.strictEqual(stats.hibernated, 1);
      assert.strictEqual(stats.waiting, 0);
    });

    it('stays resident with idleMs 0', async function () {
      const engine = await openVMM({ idleMs: 0 });
      const vm = engine.createVM({ image: counterImage });
      await vm.start();
      await vm.call('one');

      // Longer than the default idleMs of 250 ms.
      await sleep(400);

      assert.strictEqual(vm.state, 'waiting');
      assert.strictEqual(engine.stats().hibernations, 0);
    });
  });

  describe('context cap', function () {
    const CAP = 4;
    const VM_COUNT = 20;

    /** Boots VM_COUNT counter VMs under the cap and calls each once, in order. */
    async function counterFleet(): Promise<VM[]> {
      // Two workers on any host, because idle workers may hibernate VMs
      // ahead of need to keep contexts free, and how many can depend on
      // the worker count.
      const engine = await openVMM({ idleMs: 0, maxResident: CAP, workers: 2 });
      const vms: VM[] = [];
      for (let i = 0; i < VM_COUNT; i++) {
        const vm = engine.createVM({ image: counterImage });
        await vm.start();
        const reply = parseCounter(await vm.call(`first ${i}`));
        assert.deepStrictEqual(reply, { id: vm.id, count: 1, payload: `first ${i}` });
        // The reply can reach JavaScript before the guest waits again.
        await waitUntilParked(vm);
        vms.push(vm);
      }
      return vms;
    }

    /**
     * Asserts that the resident VMs of `parkOrder` (least recently parked
     * first) are the most recently parked ones. So the hibernated VMs come
     * first, then the waiting ones, and the last VM waits.
     *
     * An idle worker may hibernate a VM ahead of need while the states are
     * read. With no call pending, a VM in state 'running' is on its way to
     * 'hibernated', so it counts as hibernated.
     */
    function assertResidentSuffix(parkOrder: VM[]): void {
      const states = parkOrder.map((vm) => (vm.state === 'running' ? 'hibernated' : vm.state));
      const firstWaiting = states.indexOf('waiting');
      const expected = states.map((_, i) => (firstWaiting >= 0 && i >= firstWaiting ? 'waiting' : 'hibernated'));

      assert.deepStrictEqual(states, expected, `VM ${parkOrder.map((vm) => vm.id).join(', ')} in park order`);
      assert.strictEqual(states[states.length - 1], 'waiting', 'the most recently parked VM');
      assert.isAtMost(states.length - firstWaiting, CAP);
    }

    it('hibernates VMs past the cap', async function () {
      await counterFleet();

      // An idle worker may still be hibernating a VM ahead of need; with no
      // call pending, every VM ends up waiting or hibernated.
      const stats = await waitForStats(vmm!, (s) => s.running === 0, 'no VM running');
      assert.strictEqual(stats.maxResident, CAP);
      assert.isAtMost(stats.residentContexts, CAP);
      assert.isAtMost(stats.maxResidentReached, CAP);
      assert.isAtLeast(stats.hibernated, VM_COUNT - CAP);
      assert.strictEqual(stats.hibernated + stats.waiting, VM_COUNT);
      assert.strictEqual(stats.hibernations, stats.hibernated, 'idleMs 0: only the cap hibernates');
    });

    it('hibernates the least recently parked', async function () {
      const vms = await counterFleet();

      // Called in order, so the VMs parked in order: every hibernated VM must
      // have parked before every resident one.
      assertResidentSuffix(vms);

      // Waking the first VM takes a context, and whichever VM gives one back
      // must be among the least recently parked. vms[0] parked last now.
      await vms[0].call('again');
      await waitUntilParked(vms[0]);
      assertResidentSuffix([...vms.slice(1), vms[0]]);
    });

    it('wakes every VM on demand', async function () {
      const vms = await counterFleet();

      const replies = [];
      for (const vm of vms) replies.push(parseCounter(await vm.call('second')));

      assert.deepStrictEqual(
        replies,
        vms.map((vm) => ({ id: vm.id, count: 2, payload: 'second' })),
      );
      const stats = vmm!.stats();
      assert.isAtMost(stats.residentContexts, CAP);
      assert.isAtMost(stats.maxResidentReached, CAP);
      assert.isAtLeast(stats.wakes, VM_COUNT - CAP);
    });

    it('wakes VMs called all at once', async function () {
      const vms = await counterFleet();

      const replies = await Promise.all(vms.map(async (vm) => parseCounter(await vm.call('together'))));

      assert.deepStrictEqual(
        replies,
        vms.map((vm) => ({ id: vm.id, count: 2, payload: 'together' })),
      );
      assert.isAtMost(vmm!.stats().maxResidentReached, CAP);
    });
  });

  describe('context cap with two VMMs', function () {
    let other: VMM | undefined;

    afterEach(async function () {
      await other?.close();
      other = undefined;
    });

    it('settles a start under another VMM', async function () {
      // KVM contexts are counted per process, so contexts that another VMM's
      // waiting VMs hold count against this VMM's cap, and this VMM cannot
      // hibernate them. Its start may fail, but it must not wait forever.
      other = new VMM({ idleMs: 0 });
      const otherImage = await loadGuest(other, 'counter');
      for (let i = 0; i < 8; i++) {
        const vm = other.createVM({ image: otherImage });
        await vm.start();
        await vm.call(`hold ${i}`);
      }
      const engine = await openVMM({ idleMs: 0, maxResident: 4 });
      const vm = engine.createVM({ image: counterImage });

      const settled = await settleWithin(vm.start(), SETTLE_MS);

      assert.notStrictEqual(settled.status, 'pending', 'start() did not settle');
    });
  });

  describe('context cap after a destroy', function () {
    it('starts after a destroy at the cap', async function () {
      // destroy() releases the VM's context on a worker thread, after it
      // returns. A VM started right away must still get a context, because
      // none belongs to a running VM.
      const engine = await openVMM({ idleMs: 0, maxResident: 1 });
      let previous: VM | undefined;

      for (let i = 0; i < 100; i++) {
        previous?.destroy();
        const vm = engine.createVM({ image: counterImage });
        const settled = await settleWithin(vm.start(), SETTLE_MS);

        const failure = settled.status === 'rejected' ? `${settled.error.code}: ${settled.error.message}` : '';
        assert.strictEqual(settled.status, 'resolved', `start ${i} after a destroy: ${failure}`);
        assert.strictEqual(parseCounter(await vm.call('ping')).count, 1, `VM ${i}`);
        await waitUntilParked(vm);
        previous = vm;
      }
    });
  });

  describe('page store', function () {
    it('frees pages of destroyed VMs', async function () {
      this.timeout(120000);
      const engine = await openVMM({ idleMs: 5 });
      const snapshot = await counterSnapshot(engine, counterImage);
      const baseline = (await waitForStats(engine, (s) => s.vms === 0, 'the template to be gone')).pageStoreBytes;
      const clones: VM[] = [];
      for (let i = 0; i < 200; i++) {
        const clone = await startClone(engine, snapshot);
        await clone.call(`clone ${i}`);
        clones.push(clone);
      }

      const hibernated = await waitForStats(engine, (s) => s.hibernated === 200, '200 hibernated clones', 30000);
      for (const clone of clones) clone.destroy();
      const after = engine.stats();

      assert.isAbove(hibernated.pageStoreBytes, baseline);
      assert.strictEqual(after.pageStoreBytes, baseline);
      assert.strictEqual(after.hibernated, 0);
      assert.strictEqual(after.vms, 0);
    });
  });

  describe('pool trim', function () {
    const POOL_SIZE = 2;
    const VM_COUNT = 8;
    // A pooled context is closed after one second unused; the margin covers
    // a loaded host.
    const TRIM_LIMIT_MS = 10000;

    it('closes contexts past poolSize', async function () {
      this.timeout(30000);
      const engine = await openVMM({ idleMs: 10, poolSize: POOL_SIZE });
      const snapshot = await counterSnapshot(engine, counterImage);
      const clones: VM[] = [];
      for (let i = 0; i < VM_COUNT; i++) {
        const clone = await startClone(engine, snapshot);
        await clone.call(`clone ${i}`);
        clones.push(clone);
      }

      const peak = engine.stats().maxResidentReached;
      const trimmed = await waitForStats(
        engine,
        (s) => s.hibernated === VM_COUNT && s.residentContexts <= POOL_SIZE,
        `${VM_COUNT} hibernated clones and at most ${POOL_SIZE} contexts`,
        TRIM_LIMIT_MS,
      );

      assert.isAbove(peak, POOL_SIZE, 'contexts before the trim');
      assert.strictEqual(trimmed.pooledContexts, trimmed.residentContexts);
      for (let i = 0; i < VM_COUNT; i++) {
        const reply = parseCounter(await clones[i].call(`again ${i}`));
        assert.deepStrictEqual(reply, { id: clones[i].id, count: 2, payload: `again ${i}` }, `clone ${i} after the trim`);
      }
    });

    it('keeps prewarmed contexts', async function () {
      this.timeout(30000);
      const engine = await openVMM({ idleMs: 10, poolSize: 0 });
      const snapshot = await counterSnapshot(engine, counterImage);
      await waitForStats(engine, (s) => s.residentContexts === 0, 'the template context to be closed', TRIM_LIMIT_MS);
      await engine.prewarm(snapshot, 3);

      await sleep(1500);
      const stats = engine.stats();

      assert.strictEqual(stats.pooledContexts, 3);
      assert.strictEqual(stats.residentContexts, 3);
    });
  });

  describe('messages during hibernation', function () {
    it('delivers each call exactly once', async function () {
      const VM_COUNT = 50;
      const CALLS = 20;
      const engine = await openVMM({ idleMs: 1, maxResident: 8 });
      const snapshot = await counterSnapshot(engine, counterImage);
      const clones: VM[] = [];
      for (let i = 0; i < VM_COUNT; i++) clones.push(await startClone(engine, snapshot));

      // Each VM gets its calls one after another, each after a random pause
      // of 0 to 5 ms. With idleMs 1 and 50 VMs over 8 contexts, calls land
      // before, during and after the VM's hibernation.
      const runs = await Promise.allSettled(
        clones.map(async (vm) => {
          const replies = [];
          for (let call = 1; call <= CALLS; call++) {
            replies.push(parseCounter(await vm.call(`${vm.id}/${call}`)));
            const pauseMs = Math.floor(Math.random() * 6);
            if (pauseMs > 0) await sleep(pauseMs);
          }
          return replies;
        }),
      );

      const failures = runs.flatMap((run) => (run.status === 'rejected' ? [String(run.reason)] : []));
      assert.deepStrictEqual(failures, [], 'calls that rejected');
      runs.forEach((run, index) => {
        const vm = clones[index];
        const expected = Array.from({ length: CALLS }, (_, i) => ({ id: vm.id, count: i + 1, payload: `${vm.id}/${i + 1}` }));
        assert.deepStrictEqual(run.status === 'fulfilled' ? run.value : [], expected, `replies of VM ${vm.id}`);
        const vmStats = vm.stats();
        assert.strictEqual(vmStats.calls, CALLS, `calls of VM ${vm.id}`);
        assert.strictEqual(vmStats.replies, CALLS, `replies of VM ${vm.id}`);
      });
      const stats = engine.stats();
      assert.isAbove(stats.hibernations, 0);
      assert.isAbove(stats.wakes, 0);
      assert.isAtMost(stats.maxResidentReached, 8);
    });
  });

  describe('hibernated VM', function () {
    /** Starts a counter VM, calls it `calls` times and waits until it hibernates. */
    async function hibernatedCounter(engine: VMM, calls: number): Promise<VM> {
      const vm = engine.createVM({ image: counterImage });
      await vm.start();
      for (let i = 1; i <= calls; i++) await vm.call(`call ${i}`);
      await waitForState(vm, 'hibernated');
      return vm;
    }

    it('is killed with its pages freed', async function () {
      const engine = await openVMM({ idleMs: 10 });
      const baseline = engine.stats().pageStoreBytes;
      const vm = await hibernatedCounter(engine, 3);
      const stored = engine.stats().pageStoreBytes;

      const settled = await settleWithin(vm.kill(), SETTLE_MS);

      assert.strictEqual(settled.status, 'resolved', 'kill() of a hibernated VM did not settle');
      assert.strictEqual(settled.status === 'resolved' ? settled.value.reason : undefined, 'killed');
      assert.strictEqual(vm.state, 'exited');
      assert.isAbove(stored, baseline);
      const stats = engine.stats();
      assert.strictEqual(stats.pageStoreBytes, baseline);
      assert.strictEqual(stats.hibernated, 0);
      assert.strictEqual(stats.exited, 1);
    });

    it('rejects calls after a kill', async function () {
      const engine = await openVMM({ idleMs: 10 });
      const vm = await hibernatedCounter(engine, 1);
      await vm.kill();

      const settled = await settleWithin(vm.call('late'), SETTLE_MS);

      assert.strictEqual(settled.status, 'rejected');
      assert.strictEqual(settled.status === 'rejected' ? settled.error.code : undefined, 'ERR_VM_EXITED');
    });

    it('snapshots into clones that continue', async function () {
      const engine = await openVMM({ idleMs: 10 });
      const vm = await hibernatedCounter(engine, 3);

      const snapshot = await vm.snapshot();
      const clone = await startClone(engine, snapshot);
      const cloneReply = parseCounter(await clone.call('clone'));
      const originalReply = parseCounter(await vm.call('original'));

      assert.deepStrictEqual(cloneReply, { id: clone.id, count: 4, payload: 'clone' });
      assert.deepStrictEqual(originalReply, { id: vm.id, count: 4, payload: 'original' });
    });

    it('hibernates again after a snapshot', async function () {
      const engine = await openVMM({ idleMs: 10 });
      const vm = await hibernatedCounter(engine, 2);
      const before = engine.stats().hibernations;

      await vm.snapshot();
      await waitForState(vm, 'hibernated');

      assert.isAbove(engine.stats().hibernations, before);
      assert.deepStrictEqual(parseCounter(await vm.call('after')), { id: vm.id, count: 3, payload: 'after' });
    });

    it('wakes for a balloon target', async function () {
      const engine = await openVMM({ idleMs: 10 });
      const vm = engine.createVM({ image: await loadGuest(engine, 'test-balloon'), memory: '32M' });
      await vm.start();
      assert.strictEqual(text(await vm.call(`touch ${8 * MiB}`)), `ok ${8 * MiB}`);
      assert.strictEqual(text(await vm.call('free')), 'ok');
      await waitForState(vm, 'hibernated');
      const wakesBefore = engine.stats().wakes;

      vm.setBalloon(8 * MiB);
      const deadline = Date.now() + STATE_LIMIT_MS;
      while (vm.balloonStats().actual !== 8 * MiB && Date.now() < deadline) await sleep(POLL_MS);

      const balloon = vm.balloonStats();
      assert.strictEqual(balloon.target, 8 * MiB);
      assert.strictEqual(balloon.actual, 8 * MiB, 'the hibernated guest never inflated its balloon');
      assert.isAbove(engine.stats().wakes, wakesBefore);
      assert.strictEqual(text(await vm.call('balloon')), String((8 * MiB) / 4096));
      assert.strictEqual(text(await vm.call('ping')), 'pong');
    });
  });

  // A kill or destroy that reaches a VM while a worker hibernates it to free
  // a context for another VM. The worker then owns the VM (state 'running'),
  // so the kill must be finished once the hibernation ends.
  describe('eviction races', function () {
    const ITERATIONS = 150;
    // A victim that wrote 8 MiB takes milliseconds to hibernate, so a kill
    // after a random pause of up to 3 ms often lands inside the hibernation.
    const TOUCH_BYTES = 8 * MiB;
    const MAX_PAUSE_US = 3000;

    let balloonImage: Image;

    /**
     * Starts a victim that wrote TOUCH_BYTES, then a VM that needs its
     * context (maxResident 1), and calls `strike` on the victim after a
     * random pause. An idle worker may also hibernate the victim as soon as
     * it waits, to keep a context free.
     *
     * Returns both VMs, the other VM's start() and the victim's state just
     * before the strike.
     */
    async function strikeDuringEviction(
      engine: VMM,
      strike: (victim: VM) => void,
    ): Promise<{ victim: VM; other: VM; stateAtStrike: VMState; starting: Promise<void> }> {
      const victim = engine.createVM({ image: balloonImage, memory: '32M' });
      await victim.start();
      assert.strictEqual(text(await victim.call(`touch ${TOUCH_BYTES}`)), `ok ${TOUCH_BYTES}`);
      const other = engine.createVM({ image: balloonImage, memory: '32M' });
      const starting = other.start();
      spinMicroseconds(Math.random() * MAX_PAUSE_US);
      const stateAtStrike = victim.state;
      strike(victim);
      return { victim, other, stateAtStrike, starting };
    }

    /** Waits until every KVM context alive is pooled, so the next victim finds one. */
    function allContextsPooled(engine: VMM): Promise<VMMStats> {
      return waitForStats(engine, (s) => s.residentContexts === s.pooledContexts, 'every context to be pooled');
    }

    it('kill during eviction ends the VM', async function () {
      const engine = await openVMM({ idleMs: 0, maxResident: 1 });
      balloonImage = await loadGuest(engine, 'test-balloon');
      let strikesOnWorker = 0;

      for (let i = 0; i < ITERATIONS; i++) {
        let killed: Promise<unknown> = Promise.resolve();
        const { victim, other, stateAtStrike, starting } = await strikeDuringEviction(engine, (vm) => {
          killed = vm.kill();
        });
        if (stateAtStrike === 'running') strikesOnWorker++;
        const settled = await settleWithin(killed, SETTLE_MS);

        assert.strictEqual(
          settled.status,
          'resolved',
          `iteration ${i}: kill() did not settle. The victim was ${stateAtStrike} at the kill and is ${victim.state} now.`,
        );
        assert.strictEqual(victim.state, 'exited', `iteration ${i}`);
        // The other VM's start may fail on its own, a case that 'starts
        // after a destroy at the cap' covers.
        await starting.catch(() => undefined);
        other.destroy();
        victim.destroy();
        await allContextsPooled(engine);
      }

      const stats = engine.stats();
      assert.strictEqual(stats.running, 0);
      assert.strictEqual(stats.pageStoreBytes, 0);
      assert.isAbove(strikesOnWorker, 0, 'no kill landed while a worker held the victim');
    });

    it('destroy during eviction frees pages', async function () {
      const engine = await openVMM({ idleMs: 0, maxResident: 1 });
      balloonImage = await loadGuest(engine, 'test-balloon');
      let strikesOnWorker = 0;

      for (let i = 0; i < ITERATIONS; i++) {
        const { other, stateAtStrike, starting } = await strikeDuringEviction(engine, (vm) => vm.destroy());
        if (stateAtStrike === 'running') strikesOnWorker++;
        await starting.catch(() => undefined);
        other.destroy();
        await allContextsPooled(engine);
      }

      const stats = engine.stats();
      assert.strictEqual(stats.vms, 0);
      assert.strictEqual(stats.pageStoreBytes, 0, 'page store bytes left by destroyed VMs');
      assert.strictEqual(stats.residentContexts, stats.pooledContexts, 'contexts held by destroyed VMs');
      assert.isAbove(strikesOnWorker, 0, 'no destroy landed while a worker held the victim');
    });
  });
});

describe('runDensity()', function () {
  before(function () {
    requireKvm(this);
  });

  it('hibernates 100,000 clones', async function () {
    this.timeout(180000);

    const result = await runDensity({ vms: 100000, sample: 1000 });

    assert.strictEqual(result.vms, 100000);
    assert.strictEqual(result.sampled, 1000);
    assert.strictEqual(result.verified, 101000, 'replies with the right id and count');
    assert.strictEqual(result.hibernated, 100000);
    assert.isBelow(result.hostBytesPerIdleVm, 20 * 1024);
    assert.isAtMost(result.maxResident, result.residentCap);
  });
});
