import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { Snapshot, VM } from '../lib/index.js';
import { PAGE_SIZE, loadGuest, parseCounter, requireKvm } from './helpers.js';

const KiB = 1024;
const CLONE_COUNT = 1000;
// Pages a counter clone writes for one call: boot page, stack, request and
// reply buffers and the page with its count. 20 KiB was measured on the
// development machine. A clone that copied all 72 KiB of the snapshot's pages
// would exceed the limit.
const CLONE_PRIVATE_LIMIT = 64 * KiB;
// memoryStats() and stats() read /proc/self/pagemap at different moments.
// Every VM here is blocked in a wait meanwhile, so they should agree exactly.
// Two pages leave room for a page the engine touches in between.
const ACCOUNTING_SLACK = 2 * PAGE_SIZE;

describe('snapshot clone density', function () {
  let vmm: VMM;
  let snapshot: Snapshot;
  let original: VM;

  beforeEach(async function () {
    requireKvm(this);
    // Resident clones only: no idle hibernation, and room for all of them.
    vmm = new VMM({ idleMs: 0, maxResident: 2500 });
    original = vmm.createVM({ image: await loadGuest(vmm, 'counter') });
    await original.start();
    await original.call('before snapshot');
    snapshot = await original.snapshot();
  });

  afterEach(async function () {
    await vmm?.close();
  });

  /** Creates `count` clones of the snapshot and starts them all at once. */
  async function startClones(count: number): Promise<{ clones: VM[]; failures: Error[] }> {
    const clones = Array.from({ length: count }, () => vmm.createVM({ snapshot }));
    const results = await Promise.allSettled(clones.map((clone) => clone.start()));
    const failures = results
      .filter((result): result is PromiseRejectedResult => result.status === 'rejected')
      .map((result) => result.reason as Error);
    return { clones, failures };
  }

  /** Fails with the count and the first error when any clone failed to start. */
  function assertAllStarted(failures: Error[]): void {
    const first = failures.length > 0 ? `, the first with: ${failures[0].message}` : '';
    assert.strictEqual(failures.length, 0, `clones failed to start${first}`);
  }

  it('starts 1,000 clones without prewarm', async function () {
    // Each start builds its KVM context on a worker while the other clones
    // wait in the run queue, so the workers' time slices run out during
    // boots, and more so as the process maps more guest memory.
    const { clones, failures } = await startClones(CLONE_COUNT);

    assertAllStarted(failures);
    const replies = await Promise.all(clones.map((clone) => clone.call('hi')));
    assert.strictEqual(replies.length, CLONE_COUNT);
  });

  it('shares pages among 1,000 clones', async function () {
    await vmm.prewarm(snapshot, CLONE_COUNT);
    const { clones, failures } = await startClones(CLONE_COUNT);
    assertAllStarted(failures);

    const replies = (await Promise.all(clones.map((clone) => clone.call('hi')))).map(parseCounter);
    const stats = clones.map((clone) => clone.memoryStats());
    const totals = vmm.stats();

    replies.forEach((reply, i) => {
      assert.deepStrictEqual(reply, { id: clones[i].id, count: 2, payload: 'hi' }, `reply of clone ${clones[i].id}`);
    });
    stats.forEach((memory, i) => {
      assert.isAtMost(memory.privateBytes, CLONE_PRIVATE_LIMIT, `private bytes of clone ${clones[i].id}`);
      assert.isAbove(memory.sharedBytes, 0, `shared bytes of clone ${clones[i].id}`);
    });
    assert.strictEqual(totals.vms, CLONE_COUNT + 1);
    assert.strictEqual(totals.waiting, CLONE_COUNT + 1, 'every VM waits for its next call');
    assert.isAtMost(totals.privateBytes / CLONE_COUNT, CLONE_PRIVATE_LIMIT, 'private bytes per clone');
  });

  it('totals memory over the VMs', async function () {
    const { clones, failures } = await startClones(10);
    assertAllStarted(failures);
    await Promise.all(clones.map((clone, i) => clone.call('x'.repeat(i * 1000))));
    const vms = [original, ...clones];

    const perVM = vms.map((vm) => vm.memoryStats());
    const totals = vmm.stats();
    const privateSum = perVM.reduce((sum, memory) => sum + memory.privateBytes, 0);
    const sharedSum = perVM.reduce((sum, memory) => sum + memory.sharedBytes, 0);

    assert.strictEqual(totals.vms, vms.length);
    assert.isAbove(privateSum, 0);
    assert.isAbove(sharedSum, 0);
    assert.closeTo(totals.privateBytes, privateSum, ACCOUNTING_SLACK, 'private bytes');
    assert.closeTo(totals.sharedBytes, sharedSum, ACCOUNTING_SLACK, 'shared bytes');
  });

  it('drops a destroyed clone from the totals', async function () {
    const { clones, failures } = await startClones(2);
    assertAllStarted(failures);
    await Promise.all(clones.map((clone) => clone.call('x')));
    const remaining = clones[0];
    clones[1].destroy();

    const totals = vmm.stats();
    const expectedPrivate = original.memoryStats().privateBytes + remaining.memoryStats().privateBytes;

    assert.strictEqual(totals.vms, 2);
    assert.closeTo(totals.privateBytes, expectedPrivate, ACCOUNTING_SLACK);
  });
});
