import { assert } from 'chai';

import { VMM, VMMError } from '../lib/index.js';
import type { Image, VMExit } from '../lib/index.js';
import {
  captureConsole,
  consoleContains,
  errorOf,
  loadGuest,
  rejectionOf,
  requireKvm,
  runToExit,
  settleWithin,
} from './helpers.js';

// Far longer than an exit event takes to arrive (milliseconds), yet short
// enough that a promise that never settles fails fast.
const SETTLE_MS = 2000;

describe('VM#start()', function () {
  let vmm: VMM;
  let hello: Image;

  before(function () {
    requireKvm(this);
  });

  beforeEach(async function () {
    vmm = new VMM();
    hello = await loadGuest(vmm, 'hello');
  });

  afterEach(async function () {
    await vmm?.close();
  });

  it('runs hello with its id and cmdline', async function () {
    const vm = vmm.createVM({ image: hello, cmdline: 'boot-test mode=1' });
    const output = captureConsole(vm);

    const exit = await runToExit(vm);

    assert.strictEqual(output.text(), `Hello from node-vmm guest ${vm.id}\ncmdline: boot-test mode=1\n`);
    assert.strictEqual(exit.code, 0);
    assert.strictEqual(exit.reason, 'exit');
  });

  it('prints a UTF-8 cmdline intact', async function () {
    const cmdline = 'héllo wörld ✓ 日本 🚀';
    const vm = vmm.createVM({ image: hello, cmdline });
    const output = captureConsole(vm);

    await runToExit(vm);

    assert.include(output.text(), `cmdline: ${cmdline}\n`);
  });

  it('gives each VM its own id', async function () {
    const first = vmm.createVM({ image: hello });
    const second = vmm.createVM({ image: hello });
    const firstOutput = captureConsole(first);
    const secondOutput = captureConsole(second);

    await Promise.all([runToExit(first), runToExit(second)]);

    assert.notStrictEqual(first.id, second.id);
    assert.include(firstOutput.text(), `guest ${first.id}\n`);
    assert.include(secondOutput.text(), `guest ${second.id}\n`);
  });

  it('boots with the 4 MiB minimum', async function () {
    const vm = vmm.createVM({ image: hello, memory: '4M' });

    const exit = await runToExit(vm);

    assert.strictEqual(exit.reason, 'exit');
    assert.strictEqual(exit.code, 0);
  });

  it('rejects a second start', async function () {
    const vm = vmm.createVM({ image: hello });
    const first = vm.start();

    const err = await rejectionOf(vm.start());
    await first;

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VM_ALREADY_STARTED');
  });

  it('rejects start after exit', async function () {
    const vm = vmm.createVM({ image: hello });
    await runToExit(vm);

    const err = await rejectionOf(vm.start());

    assert.strictEqual(err.code, 'ERR_VM_ALREADY_STARTED');
  });

  it('rejects start after a kill', async function () {
    const vm = vmm.createVM({ image: hello });
    await vm.kill();

    const err = await rejectionOf(vm.start());

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VM_EXITED');
  });

  it('rejects start after destroy', async function () {
    const vm = vmm.createVM({ image: hello });
    vm.destroy();

    const err = await rejectionOf(vm.start());

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VM_DESTROYED');
  });
});

describe('VM#start() with calls in the same run', function () {
  let vmm: VMM;
  let echo: Image;

  before(function () {
    requireKvm(this);
  });

  beforeEach(async function () {
    vmm = new VMM();
    echo = await loadGuest(vmm, 'echo');
  });

  afterEach(async function () {
    await vmm?.close();
  });

  it('serves the calls in order', async function () {
    const vm = vmm.createVM({ image: echo });
    const starting = vm.start();
    const first = vm.call('one');
    const second = vm.call('two');

    await starting;
    const replies = [new TextDecoder().decode(await first), new TextDecoder().decode(await second)];

    assert.deepStrictEqual(replies, ['one', 'two']);
    assert.strictEqual(vm.stats().calls, 2);
  });

  it('copies a reused payload buffer', async function () {
    const vm = vmm.createVM({ image: echo });
    const payload = new TextEncoder().encode('abc');
    const starting = vm.start();
    const reply = vm.call(payload);
    payload.fill(0x7a);

    await starting;

    assert.strictEqual(new TextDecoder().decode(await reply), 'abc');
  });

  it('copies a reused Buffer subarray', async function () {
    const vm = vmm.createVM({ image: echo });
    const buffer = Buffer.from('xabcx');
    const starting = vm.start();
    const reply = vm.call(buffer.subarray(1, 4));
    buffer.fill(0x7a);

    await starting;

    assert.strictEqual(new TextDecoder().decode(await reply), 'abc');
  });

  it('settles start() before snapshot()', async function () {
    const vm = vmm.createVM({ image: echo });
    const settled: string[] = [];
    const starting = vm.start().then(() => settled.push('start'));
    const reply = vm.call('one');
    const capture = vm.snapshot().then(() => settled.push('snapshot'));

    await Promise.all([starting, reply, capture]);

    assert.deepStrictEqual(settled, ['start', 'snapshot']);
  });

  it('reports a started state at once', async function () {
    const vm = vmm.createVM({ image: echo });
    const starting = vm.start();

    const state = vm.state;
    await starting;

    assert.notStrictEqual(state, 'created');
  });

  it('rejects all on destroy first', async function () {
    const vm = vmm.createVM({ image: echo });
    const starting = vm.start();
    const reply = vm.call('lost');
    vm.destroy();

    const startError = await rejectionOf(starting);
    const callError = await rejectionOf(reply);

    assert.strictEqual(startError.code, 'ERR_VM_DESTROYED');
    assert.strictEqual(callError.code, 'ERR_VM_DESTROYED');
  });

  it('ends on a kill in the same run', async function () {
    const vm = vmm.createVM({ image: echo });
    const starting = vm.start();
    const reply = vm.call('lost');
    const exit = await vm.kill();

    const callError = await rejectionOf(reply);
    const startSettled = await settleWithin(starting, SETTLE_MS);

    assert.strictEqual(exit.reason, 'killed');
    assert.strictEqual(callError.code, 'ERR_VM_EXITED');
    assert.notStrictEqual(startSettled.status, 'pending', 'start() settles');
  });
});

describe('VM exit code', function () {
  let vmm: VMM;
  let testExit: Image;

  before(async function () {
    requireKvm(this);
    vmm = new VMM();
    testExit = await loadGuest(vmm, 'test-exit');
  });

  after(async function () {
    await vmm?.close();
  });

  // The guest exits with the number on its command line; the VMM keeps its
  // low 8 bits, as a process exit status does.
  const cases: Array<[cmdline: string, code: number]> = [
    ['0', 0],
    ['1', 1],
    ['42', 42],
    ['255', 255],
    ['256', 0],
    ['-1', 255],
  ];
  for (const [cmdline, code] of cases) {
    it(`propagates cmdline '${cmdline}' as ${code}`, async function () {
      const vm = vmm.createVM({ image: testExit, cmdline });

      const exit = await runToExit(vm);

      assert.strictEqual(exit.reason, 'exit');
      assert.strictEqual(exit.code, code);
      assert.strictEqual(exit.detail.code, code);
      vm.destroy();
    });
  }

  it('emits exit once', async function () {
    const vm = vmm.createVM({ image: testExit, cmdline: '7' });
    const events: VMExit[] = [];
    vm.on('exit', (exit) => events.push(exit));

    const exit = await runToExit(vm);
    await vm.kill();
    await vm.wait();

    assert.lengthOf(events, 1);
    assert.strictEqual(events[0], exit);
    assert.strictEqual(vm.exitInfo, exit);
  });
});

describe('VM#state', function () {
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

  it('follows created, running, exited, destroyed', async function () {
    const vm = vmm.createVM({ image: await loadGuest(vmm, 'test-spin') });
    const spinning = consoleContains(vm, 'spinning');
    assert.strictEqual(vm.state, 'created');

    await vm.start();
    await spinning;
    assert.strictEqual(vm.state, 'running');

    await vm.kill();
    assert.strictEqual(vm.state, 'exited');

    vm.destroy();
    assert.strictEqual(vm.state, 'destroyed');
  });

  it('keeps stats readable after exit', async function () {
    const vm = vmm.createVM({ image: await loadGuest(vmm, 'hello') });
    await runToExit(vm);

    const stats = vm.stats();

    assert.strictEqual(stats.state, 'exited');
    assert.isAbove(stats.consoleBytes, 0);
    assert.strictEqual(stats.memoryBytes, 16 * 1024 * 1024);
  });
});

describe('VM lifecycle errors', function () {
  let vmm: VMM;
  let counter: Image;
  let spin: Image;

  before(function () {
    requireKvm(this);
  });

  beforeEach(async function () {
    vmm = new VMM();
    counter = await loadGuest(vmm, 'counter');
    spin = await loadGuest(vmm, 'test-spin');
  });

  afterEach(async function () {
    await vmm?.close();
  });

  it('rejects call before start', async function () {
    const vm = vmm.createVM({ image: counter });

    const err = await rejectionOf(vm.call('early'));

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VM_NOT_STARTED');
  });

  it('rejects call after exit', async function () {
    const vm = vmm.createVM({ image: counter });
    await vm.start();
    await vm.kill();

    const err = await rejectionOf(vm.call('late'));

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VM_EXITED');
  });

  it('names the crash in ERR_VM_EXITED', async function () {
    const vm = vmm.createVM({ image: await loadGuest(vmm, 'test-pagefault') });
    const exit = await runToExit(vm);

    const err = await rejectionOf(vm.call('late'));

    assert.strictEqual(err.code, 'ERR_VM_EXITED');
    assert.include(err.message, exit.detail.message);
  });

  it('rejects call after destroy', async function () {
    const vm = vmm.createVM({ image: counter });
    await vm.start();
    vm.destroy();

    const err = await rejectionOf(vm.call('late'));

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VM_DESTROYED');
  });

  it('throws from stats after destroy', function () {
    const vm = vmm.createVM({ image: counter });
    vm.destroy();

    const err = errorOf(() => vm.stats());

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VM_DESTROYED');
  });

  it('resolves kill and wait after destroy', async function () {
    const vm = vmm.createVM({ image: counter });
    await vm.start();
    vm.destroy();

    const killExit = await vm.kill();
    const waitExit = await vm.wait();

    // destroy() ends the VM with reason 'killed', as VMExit documents.
    assert.strictEqual(killExit.reason, 'killed');
    assert.strictEqual(waitExit, killExit);
  });

  it('destroys idempotently', async function () {
    const vm = vmm.createVM({ image: counter });
    await vm.start();

    vm.destroy();
    vm.destroy();

    assert.strictEqual(vm.state, 'destroyed');
    assert.strictEqual(vmm.size, 0);
  });

  it('rejects pending calls on destroy', async function () {
    // test-spin never waits for a message, so the call stays queued.
    const vm = vmm.createVM({ image: spin });
    const spinning = consoleContains(vm, 'spinning');
    await vm.start();
    await spinning;
    const pending = vm.call('never read');

    vm.destroy();
    const err = await rejectionOf(pending);

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VM_DESTROYED');
  });

  it('rejects pending calls on exit', async function () {
    const vm = vmm.createVM({ image: spin });
    const spinning = consoleContains(vm, 'spinning');
    await vm.start();
    await spinning;
    const pending = vm.call('never read');

    await vm.kill();
    const err = await rejectionOf(pending);

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VM_EXITED');
  });

  it('settles queued counter calls on kill', async function () {
    const vm = vmm.createVM({ image: counter });
    await vm.start();
    const calls = Array.from({ length: 50 }, (_, i) => vm.call(`call ${i}`));

    await vm.kill();
    const results = await Promise.allSettled(calls);

    // A call the guest replied to before the kill resolves. Every other call
    // rejects with ERR_VM_EXITED, and none may stay pending.
    for (const result of results) {
      if (result.status === 'rejected') {
        assert.strictEqual((result.reason as VMMError).code, 'ERR_VM_EXITED');
      }
    }
    assert.lengthOf(results, 50);
  });

  it('settles wait() on destroy', async function () {
    const vm = vmm.createVM({ image: spin });
    await vm.start();
    const waiting = vm.wait();

    vm.destroy();
    const settlement = await settleWithin(waiting, SETTLE_MS);

    // VMExit documents reason 'killed' for a VM ended by destroy().
    assert.strictEqual(settlement.status, 'resolved', 'wait() did not settle after destroy()');
    if (settlement.status === 'resolved') {
      assert.strictEqual(settlement.value.reason, 'killed');
    }
  });

  it('settles kill() on destroy', async function () {
    const vm = vmm.createVM({ image: spin });
    const spinning = consoleContains(vm, 'spinning');
    await vm.start();
    await spinning;
    const killing = vm.kill();

    vm.destroy();
    const settlement = await settleWithin(killing, SETTLE_MS);

    assert.notStrictEqual(settlement.status, 'pending', 'kill() did not settle after destroy()');
  });
});

describe('VMM#close()', function () {
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

  it('closes idempotently', async function () {
    await vmm.close();
    await vmm.close();

    assert.isTrue(vmm.closed);
  });

  it('rejects createVM after close', async function () {
    const image = await loadGuest(vmm, 'hello');
    await vmm.close();

    const err = errorOf(() => vmm.createVM({ image }));

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VMM_CLOSED');
  });

  it('rejects loadImage after close', async function () {
    await vmm.close();

    const err = await rejectionOf(loadGuest(vmm, 'hello'));

    assert.instanceOf(err, VMMError);
    assert.strictEqual(err.code, 'ERR_VMM_CLOSED');
  });

  it('destroys every VM', async function () {
    const vm = vmm.createVM({ image: await loadGuest(vmm, 'counter') });
    await vm.start();
    const pending = vm.call('first');
    const idle = vmm.createVM({ image: await loadGuest(vmm, 'hello') });

    await vmm.close();

    assert.strictEqual(vm.state, 'destroyed');
    assert.strictEqual(idle.state, 'destroyed');
    assert.strictEqual(vmm.size, 0);
    // The reply may have arrived before close(); otherwise the call rejects.
    const settlement = await settleWithin(pending, SETTLE_MS);
    assert.notStrictEqual(settlement.status, 'pending');
    if (settlement.status === 'rejected') {
      assert.strictEqual(settlement.error.code, 'ERR_VM_DESTROYED');
    }
    const err = await rejectionOf(vm.call('after close'));
    assert.strictEqual(err.code, 'ERR_VM_DESTROYED');
  });

  it('settles wait() of a running VM', async function () {
    const vm = vmm.createVM({ image: await loadGuest(vmm, 'test-spin') });
    await vm.start();
    const waiting = vm.wait();

    await vmm.close();
    const settlement = await settleWithin(waiting, SETTLE_MS);

    // VMExit documents reason 'killed' for a VM ended by VMM#close().
    assert.strictEqual(settlement.status, 'resolved', 'wait() did not settle after close()');
    if (settlement.status === 'resolved') {
      assert.strictEqual(settlement.value.reason, 'killed');
    }
  });
});
