import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { Image, VM } from '../lib/index.js';
import { consoleContains, loadGuest, rejectionOf, requireKvm, text } from './helpers.js';

/** The reply of the counter guest, as csrc/guest/guests/counter.c documents it. */
interface CounterReply {
  id: number;
  count: number;
  payload?: string;
  error?: string;
}

function parseCounterReply(reply: Uint8Array): CounterReply {
  return JSON.parse(text(reply)) as CounterReply;
}

describe('VM#call()', function () {
  let vmm: VMM;
  let counterImage: Image;
  let echoImage: Image;

  before(async function () {
    requireKvm(this);
    vmm = new VMM();
    counterImage = await loadGuest(vmm, 'counter');
    echoImage = await loadGuest(vmm, 'echo');
  });

  after(async function () {
    await vmm?.close();
  });

  async function startedVM(image: Image): Promise<VM> {
    const vm = vmm.createVM({ image });
    await vm.start();
    return vm;
  }

  describe('on counter', function () {
    let counter: VM;

    beforeEach(async function () {
      counter = await startedVM(counterImage);
    });

    afterEach(function () {
      counter?.destroy();
    });

    it('counts three calls in order', async function () {
      // Sent without waiting in between: messages are delivered in order.
      const replies = await Promise.all([counter.call('one'), counter.call('two'), counter.call('three')]);
      const parsed = replies.map(parseCounterReply);

      assert.deepStrictEqual(parsed, [
        { id: counter.id, count: 1, payload: 'one' },
        { id: counter.id, count: 2, payload: 'two' },
        { id: counter.id, count: 3, payload: 'three' },
      ]);
    });

    it('accepts a Uint8Array payload', async function () {
      const reply = parseCounterReply(await counter.call(new Uint8Array([0x61, 0x62, 0x63])));

      assert.strictEqual(reply.payload, 'abc');
      assert.strictEqual(reply.count, 1);
    });

    it('sends only a subarray view', async function () {
      const backing = new TextEncoder().encode('xxINSIDEyy');

      const reply = parseCounterReply(await counter.call(backing.subarray(2, 8)));

      assert.strictEqual(reply.payload, 'INSIDE');
    });

    it('accepts an empty payload', async function () {
      const reply = parseCounterReply(await counter.call(''));

      assert.strictEqual(reply.payload, '');
      assert.strictEqual(reply.count, 1);
    });

    it('escapes quotes and control bytes', async function () {
      const payload = 'quote " backslash \\ newline \n tab \t nul \u0000 end';

      const reply = parseCounterReply(await counter.call(payload));

      assert.strictEqual(reply.payload, payload);
    });

    it('reports a reply too long', async function () {
      // The counter reply wraps the payload in JSON, so a 65536-byte payload
      // cannot fit in a 65536-byte reply.
      const reply = parseCounterReply(await counter.call('a'.repeat(65536)));

      assert.strictEqual(reply.error, 'payload too long');
      assert.strictEqual(reply.count, 1);
      assert.strictEqual(reply.id, counter.id);
    });

    it('counts calls and replies in stats', async function () {
      await counter.call('a');
      await counter.call('b');

      const stats = counter.stats();

      assert.strictEqual(stats.calls, 2);
      assert.strictEqual(stats.replies, 2);
      // Each served call costs the guest at least one hypercall.
      assert.isAtLeast(stats.hypercalls, 2);
    });
  });

  describe('on echo', function () {
    let echo: VM;

    beforeEach(async function () {
      echo = await startedVM(echoImage);
    });

    afterEach(function () {
      echo?.destroy();
    });

    it('round-trips UTF-8 text', async function () {
      const message = 'naïve café — 日本語 — 🚀🎉 — Ω≈ç√';

      const reply = await echo.call(message);

      assert.strictEqual(text(reply), message);
    });

    it('round-trips every byte value', async function () {
      const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);

      const reply = await echo.call(bytes);

      assert.deepStrictEqual(Array.from(reply), Array.from(bytes));
    });

    it('returns an empty reply', async function () {
      const reply = await echo.call(new Uint8Array(0));

      assert.strictEqual(reply.byteLength, 0);
    });

    it('round-trips 65536 bytes', async function () {
      const bytes = Uint8Array.from({ length: 65536 }, (_, i) => (i * 31 + 7) & 0xff);

      const reply = await echo.call(bytes);

      assert.strictEqual(reply.byteLength, 65536);
      assert.isTrue(Buffer.from(reply).equals(Buffer.from(bytes)), 'reply bytes differ from the request');
    });

    it('rejects 65537 bytes', async function () {
      const err = await rejectionOf(echo.call(new Uint8Array(65537)));

      assert.instanceOf(err, RangeError);
      assert.strictEqual(err.code, 'ERR_OUT_OF_RANGE');
      assert.include(err.message, '65537');
    });

    it('rejects a 65537-byte string', async function () {
      // 65535 ASCII bytes and one 2-byte character: the limit is in bytes.
      const err = await rejectionOf(echo.call('a'.repeat(65535) + 'é'));

      assert.instanceOf(err, RangeError);
      assert.strictEqual(err.code, 'ERR_OUT_OF_RANGE');
    });

    it('serves calls after a rejected payload', async function () {
      await rejectionOf(echo.call(new Uint8Array(65537)));

      const reply = await echo.call('still here');

      assert.strictEqual(text(reply), 'still here');
    });

    it('rejects a non-Uint8Array payload', async function () {
      const err = await rejectionOf(echo.call(new Uint16Array(4) as unknown as Uint8Array));

      assert.instanceOf(err, TypeError);
      assert.strictEqual(err.code, 'ERR_INVALID_ARG_TYPE');
    });
  });
});

describe('VMM concurrency', function () {
  let vmm: VMM;
  const extraVMMs: VMM[] = [];

  before(function () {
    requireKvm(this);
  });

  beforeEach(function () {
    vmm = new VMM();
  });

  afterEach(async function () {
    await vmm?.close();
    await Promise.all(extraVMMs.splice(0).map((extra) => extra.close()));
  });

  it('serves 100 VMs with distinct ids', async function () {
    const image = await loadGuest(vmm, 'counter');
    const vms = Array.from({ length: 100 }, () => vmm.createVM({ image }));

    const replies = await Promise.all(
      vms.map(async (vm) => {
        await vm.start();
        return parseCounterReply(await vm.call(`vm ${vm.id}`));
      }),
    );

    const ids = new Set(replies.map((reply) => reply.id));
    assert.strictEqual(ids.size, 100);
    replies.forEach((reply, i) => {
      assert.strictEqual(reply.id, vms[i].id, `reply ${i} came from another VM`);
      assert.strictEqual(reply.payload, `vm ${vms[i].id}`);
      assert.strictEqual(reply.count, 1);
    });
  });

  it('serves calls beside a spinning guest', async function () {
    // One worker: the counter VM only gets it when the watchdog preempts the
    // spinning guest at the end of its time slice.
    const single = new VMM({ workers: 1 });
    extraVMMs.push(single);
    const spin = single.createVM({ image: await loadGuest(single, 'test-spin') });
    const spinning = consoleContains(spin, 'spinning');
    await spin.start();
    await spinning;
    const counter = single.createVM({ image: await loadGuest(single, 'counter') });
    await counter.start();

    const reply = parseCounterReply(await counter.call('beside'));

    assert.strictEqual(reply.payload, 'beside');
    assert.strictEqual(spin.state, 'running');
  });
});
