import * as fs from 'node:fs';

import { assert } from 'chai';

import { native } from '../lib/binding';
import type { NativeEngine, NativeEvent } from '../lib/binding';
import { bundledGuest } from '../lib/index.js';
import { requireKvm, settleWithin } from './helpers.js';

// VMs started per run. Each boots hello, which prints at once and exits, so
// its console output can race the watchdog's kStarted at the end of a slice.
// NOTE: that race lasts nanoseconds, and this test did not catch it on the
// 2-vCPU test host before the fix. It still checks the order of every other
// event.
const VM_COUNT = 200;
// Time the whole run gets before it counts as hung.
const RUN_LIMIT_MS = 20000;
// Guest RAM of each VM, the 4 MiB minimum.
const RAM_BYTES = 4 * 1024 * 1024;

describe('engine event order', function () {
  let engine: NativeEngine | undefined;

  before(function () {
    requireKvm(this);
  });

  afterEach(function () {
    engine?.shutdown();
    engine = undefined;
  });

  it('sends started first for each VM', async function () {
    const events = new Map<number, string[]>();
    let exited = 0;
    let allExited: () => void = () => {};
    const done = new Promise<void>((resolve) => {
      allExited = resolve;
    });
    // A 1 ms slice makes the watchdog send kStarted while hello still prints,
    // and with no pool each boot creates a KVM context, about 0.8 ms.
    engine = new native.NativeEngine(
      { workers: 2, sliceMs: 1, poolSize: 0, maxResident: 0, idleMs: 250 },
      (batch: NativeEvent[]) => {
        for (const event of batch) {
          const list = events.get(event.vm) ?? [];
          list.push(event.type);
          events.set(event.vm, list);
          if (event.type === 'exit' && ++exited === VM_COUNT) allExited();
        }
      },
    );
    engine.ref();
    const image = new native.NativeImage(fs.readFileSync(bundledGuest('hello')));
    const ids: number[] = [];
    for (let i = 0; i < VM_COUNT; i++) {
      const id = engine.create(image, RAM_BYTES, '');
      // A queued message defers kStarted to the VM's first event.
      engine.start(id, [i + 1], [new Uint8Array([1])]);
      ids.push(id);
    }

    const settled = await settleWithin(done, RUN_LIMIT_MS);

    assert.strictEqual(settled.status, 'resolved', `only ${exited} of ${VM_COUNT} VMs exited`);
    for (const id of ids) {
      const types = events.get(id) ?? [];
      assert.strictEqual(types[0], 'started', `VM ${id} sent ${types.join(', ')}`);
      assert.strictEqual(types.filter((type) => type === 'started').length, 1, `VM ${id} sent ${types.join(', ')}`);
    }
  });
});
