// Density benchmark: N idle clones of the counter guest, hibernated, with a
// random sample woken again. BENCH_DENSITY_VMS sets N (default 1,000,000).
// Writes bench/results/density-<timestamp>.json.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { runDensity } from '../lib/index';

async function main(): Promise<void> {
  const vms = Number(process.env.BENCH_DENSITY_VMS ?? 1_000_000);
  const result = await runDensity({
    vms,
    onProgress: (phase, done, total) => {
      if (done === total || done % Math.max(1, Math.floor(total / 10)) === 0) process.stderr.write(`${phase}: ${done}/${total}\n`);
    },
  });
  console.log(result);
  const targets = [
    { name: 'host memory per idle VM', value: result.hostBytesPerIdleVm, limit: 20 * 1024, unit: 'bytes' },
    { name: 'wake p50', value: result.wakeP50Us, limit: 200, unit: 'us' },
    { name: 'wake p99', value: result.wakeP99Us, limit: 1000, unit: 'us' },
    { name: 'first calls per second', value: result.firstCallsPerSecond, limit: 10000, unit: '/s', atLeast: true },
  ];
  for (const t of targets) {
    const pass = t.atLeast ? t.value >= t.limit : t.value <= t.limit;
    console.log(`${pass ? 'PASS' : 'MISS'} ${t.name}: ${t.value} ${t.unit} (target ${t.atLeast ? '>=' : '<='} ${t.limit})`);
  }
  const date = new Date().toISOString();
  const dir = path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `density-${date.replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ date, ...result, targets }, null, 2) + '\n');
  console.log(`results written to ${path.relative(process.cwd(), file)}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
