// decode_exit is pure: these cases feed it made-up kvm_run contents.
import { expect } from 'chai';

import { native } from '../lib/binding';

const { decodeExit, exitReasons: R } = native.testing;
const DOORBELL = 0xfffff000;
const STUB_PORT = 0x510;

describe('decode_exit()', () => {
  it('decodes a doorbell store as a hypercall', () => {
    const exit = decodeExit({ reason: R.MMIO, address: DOORBELL, size: 8, isWrite: true, data: 0x100800 });
    expect(exit.kind).to.equal('hypercall');
    expect(exit.value).to.equal(0x100800n);
  });

  it('keeps all 64 bits of the doorbell value', () => {
    const exit = decodeExit({ reason: R.MMIO, address: DOORBELL, size: 8, isWrite: true, data: 0xffffffffffffff00n });
    expect(exit.value).to.equal(0xffffffffffffff00n);
  });

  it('rejects a doorbell read', () => {
    expect(decodeExit({ reason: R.MMIO, address: DOORBELL, size: 8, isWrite: false }).kind).to.equal('bad-mmio');
  });

  it('rejects a doorbell store of 4 bytes', () => {
    expect(decodeExit({ reason: R.MMIO, address: DOORBELL, size: 4, isWrite: true }).kind).to.equal('bad-mmio');
  });

  it('rejects MMIO at another address', () => {
    const exit = decodeExit({ reason: R.MMIO, address: DOORBELL + 8, size: 8, isWrite: true });
    expect(exit.kind).to.equal('bad-mmio');
    expect(exit.address).to.equal(BigInt(DOORBELL + 8));
  });

  it('bounds an oversized MMIO length', () => {
    const exit = decodeExit({ reason: R.MMIO, address: 0x1000, size: 0xffffffff, isWrite: true, data: 1 });
    expect(exit.kind).to.equal('bad-mmio');
    expect(exit.size).to.equal(0xffffffff);
  });

  it('decodes a stub port write as an exception', () => {
    expect(decodeExit({ reason: R.IO, address: STUB_PORT, size: 1, isWrite: true, count: 1 }).kind).to.equal('exception');
  });

  it('rejects a stub port read', () => {
    expect(decodeExit({ reason: R.IO, address: STUB_PORT, size: 1, isWrite: false, count: 1 }).kind).to.equal('bad-io');
  });

  it('rejects a repeated string write to the stub port', () => {
    expect(decodeExit({ reason: R.IO, address: STUB_PORT, size: 1, isWrite: true, count: 4 }).kind).to.equal('bad-io');
  });

  it('rejects other ports', () => {
    expect(decodeExit({ reason: R.IO, address: 0x3f8, size: 1, isWrite: true, count: 1 }).kind).to.equal('bad-io');
  });

  it('maps the fatal exits to their kinds', () => {
    const cases: Array<[number, string]> = [
      [R.HLT, 'halt'],
      [R.SHUTDOWN, 'shutdown'],
      [R.INTERNAL_ERROR, 'internal-error'],
      [R.FAIL_ENTRY, 'fail-entry'],
      [R.INTR, 'interrupted'],
    ];
    for (const [reason, kind] of cases) {
      expect(decodeExit({ reason }).kind, `exit reason ${reason}`).to.equal(kind);
    }
  });

  it('carries the internal error suberror', () => {
    const exit = decodeExit({ reason: R.INTERNAL_ERROR, suberror: 1 });
    expect(exit.value).to.equal(1n);
    expect(exit.reasonName).to.equal('KVM_EXIT_INTERNAL_ERROR');
  });

  it('maps unknown reasons to unknown', () => {
    expect(decodeExit({ reason: R.DEBUG }).kind).to.equal('unknown');
    expect(decodeExit({ reason: R.SYSTEM_EVENT }).kind).to.equal('unknown');
    const exit = decodeExit({ reason: 4242 });
    expect(exit.kind).to.equal('unknown');
    expect(exit.reasonName).to.equal('KVM_EXIT_4242');
  });
});
