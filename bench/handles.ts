// JS handle size: creates N VM handles (clones of one snapshot, not started,
// so no guest runs) and reports the JavaScript heap and process RSS they
// take per handle. BENCH_HANDLES sets N (default 1,000,000).
// Writes bench/results/handles-<timestamp>.json.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { VMM, bundledGuest } from '../lib/index';
import type { VM } from '../lib/index';
import { rssBytes } from '../lib/measure';

function settle(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) {
    gc();
    gc();
  }
}

async function main(): Promise<void> {
  const count = Number(process.env.BENCH_HANDLES ?? 1_000_000);
  const vmm = new VMM({ idleMs: 0 });
  const template = vmm.createVM({ image: await vmm.loadImage(bundledGuest('counter')) });
  await template.start();
  const snapshot = await template.snapshot();
  template.destroy();

  settle();
  const heapBefore = process.memoryUsage().heapUsed;
  const rssBefore = rssBytes();
  const handles: VM[] = new Array(count);
  for (let i = 0; i < count; i++) handles[i] = vmm.createVM({ snapshot });
  settle();
  const heapPerHandle = Math.round((process.memoryUsage().heapUsed - heapBefore) / count);
  const rssPerHandle = Math.round((rssBytes() - rssBefore) / count);
  console.log(`${count} handles: ${heapPerHandle} bytes of JS heap and ${rssPerHandle} bytes of RSS each (JS and native record)`);
  for (const vm of handles) vm.destroy();
  await vmm.close();

  const date = new Date().toISOString();
  const dir = path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `handles-${date.replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ date, count, heapPerHandle, rssPerHandle }, null, 2) + '\n');
  console.log(`results written to ${path.relative(process.cwd(), file)}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
