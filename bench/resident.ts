// Resident-context curve: boots counter VMs one at a time and keeps them all
// resident (no hibernation, no context reuse), and records what creating and
// first running a VM costs, and host memory per VM, as the count of resident
// KVM contexts grows. The default maxResident is chosen from this curve.
// Writes bench/results/resident-<timestamp>.json.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { VMM, bundledGuest } from '../lib/index';
import type { VM } from '../lib/index';
import { memAvailableBytes, nowUs, percentile } from '../lib/measure';

interface Point {
  resident: number;
  /** Create to first reply of the last 50 VMs before this count, median. */
  bootP50Us: number;
  /** Drop of MemAvailable per resident VM so far. */
  hostBytesPerVm: number;
}

async function main(): Promise<void> {
  const marks = (process.env.BENCH_RESIDENT_MARKS ?? '100,1000,5000').split(',').map(Number);
  const last = Math.max(...marks);
  const vmm = new VMM({ idleMs: 0, poolSize: 0, maxResident: last + 16 });
  const image = await vmm.loadImage(bundledGuest('counter'));
  const vms: VM[] = [];
  const points: Point[] = [];
  const recent: number[] = [];
  const before = memAvailableBytes();
  for (let i = 1; i <= last; i++) {
    const t0 = nowUs();
    const vm = vmm.createVM({ image });
    const starting = vm.start();
    await vm.call('resident');
    await starting;
    recent.push(nowUs() - t0);
    if (recent.length > 50) recent.shift();
    vms.push(vm);
    if (marks.includes(i)) {
      const point = {
        resident: i,
        bootP50Us: Math.round(percentile(recent, 0.5)),
        hostBytesPerVm: Math.round((before - memAvailableBytes()) / i),
      };
      points.push(point);
      console.log(`${i} resident: boot p50 ${point.bootP50Us} us over the last 50, ${point.hostBytesPerVm} bytes per VM`);
    }
    if (i % 500 === 0) process.stderr.write(`resident: ${i}/${last}\n`);
  }
  for (const vm of vms) vm.destroy();
  await vmm.close();

  const date = new Date().toISOString();
  const dir = path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `resident-${date.replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ date, points }, null, 2) + '\n');
  console.log(`results written to ${path.relative(process.cwd(), file)}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
