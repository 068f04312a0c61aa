import { assert } from 'chai';

import { VMM } from '../lib/index.js';
import type { VM, VMStats } from '../lib/index.js';
import { loadGuest, pssBytes, requireKvm, text } from './helpers.js';

const MiB = 1024 * 1024;
const VM_COUNT = 20;
// Size of the initialized array in test-share (csrc/guest/guests/test-share.c).
const ARRAY_BYTES = 4 * MiB;
// Pages a test-share VM writes itself: boot page, page tables, stack and the
// request and reply buffers. 24 KiB was measured; a VM whose array had been
// copied would hold 4 MiB more.
const PRIVATE_LIMIT = 1 * MiB;
// If every VM had its own copy of the array, PSS would grow by VM_COUNT *
// ARRAY_BYTES (80 MiB). Shared, it grows by one copy (4 MiB) plus the private
// pages and heap noise, so a quarter of the copied cost separates the two.
const PSS_GROWTH_LIMIT = (VM_COUNT * ARRAY_BYTES) / 4;

/**
 * Returns the checksum test-share replies with: FNV-1a over the 64-bit words
 * 0x5348415245000000 + i of its array, as decimal text.
 */
function expectedChecksum(): string {
  const mask = (1n << 64n) - 1n;
  let hash = 0xcbf29ce484222325n;
  for (let i = 0n; i < BigInt(ARRAY_BYTES / 8); i++) {
    hash = ((hash ^ (0x5348415245000000n + i)) * 0x100000001b3n) & mask;
  }
  return hash.toString();
}

describe('image page sharing', function () {
  let vmm: VMM;
  let vms: VM[];
  let checksums: string[];
  let stats: VMStats[];
  let pssGrowth: number | undefined;

  before(async function () {
    requireKvm(this);
    // The VMs stay resident, so their memory shows in memoryStats().
    vmm = new VMM({ idleMs: 0 });
    const image = await loadGuest(vmm, 'test-share');
    vms = Array.from({ length: VM_COUNT }, () => vmm.createVM({ image, memory: '16M' }));
    await Promise.all(vms.map((vm) => vm.start()));

    // Measured around the calls only: each call reads the whole array, which
    // is when its pages get mapped into the guest.
    const pssBefore = pssBytes();
    const replies = await Promise.all(vms.map((vm) => vm.call('checksum')));
    const pssAfter = pssBytes();

    checksums = replies.map(text);
    stats = vms.map((vm) => vm.stats());
    pssGrowth = pssBefore !== undefined && pssAfter !== undefined ? pssAfter - pssBefore : undefined;
  });

  after(async function () {
    await vmm?.close();
  });

  it('returns the expected checksum', function () {
    const expected = expectedChecksum();

    checksums.forEach((checksum, i) => {
      assert.strictEqual(checksum, expected, `VM ${vms[i].id} read a different array`);
    });
  });

  it('maps the array as shared pages', function () {
    stats.forEach((vmStats, i) => {
      assert.isAtLeast(vmStats.sharedBytes, ARRAY_BYTES, `VM ${vms[i].id}`);
    });
  });

  it('keeps private pages below 1 MiB', function () {
    stats.forEach((vmStats, i) => {
      assert.isBelow(vmStats.privateBytes, PRIVATE_LIMIT, `VM ${vms[i].id}`);
    });
  });

  it('grows PSS by about one copy', function () {
    // RSS would prove nothing here: it counts a page once per mapping, so 20
    // guests that share one page cache copy still add 80 MiB of RSS. PSS
    // divides each page among its mappings.
    if (pssGrowth === undefined) {
      console.log('      skipped: /proc/self/smaps_rollup is missing (Linux before 4.14)');
      this.skip();
    }

    assert.isBelow(pssGrowth ?? 0, PSS_GROWTH_LIMIT, `PSS grew by ${((pssGrowth ?? 0) / MiB).toFixed(1)} MiB`);
  });
});
