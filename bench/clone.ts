// Clone benchmark: clone to first reply (in a reused context, and in a
// prewarmed one with 1,000 clones resident), cold boot for comparison,
// private memory per idle clone, and snapshot save and load throughput.
// Prints a table and writes bench/results/clone-<timestamp>.json.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Bench } from 'tinybench';

import { VMM, bundledGuest, runFleet } from '../lib/index';
import { latencyFigure, nowUs, percentile } from '../lib/measure';
import type { LatencyFigure } from '../lib/measure';

async function main(): Promise<void> {
  const fleetVms = Number(process.env.BENCH_FLEET_VMS ?? 1000);
  const vmm = new VMM({ idleMs: 0 });
  const cold = new VMM({ poolSize: 0, idleMs: 0 });
  const image = await vmm.loadImage(bundledGuest('counter'));
  const coldImage = await cold.loadImage(bundledGuest('counter'));

  // The template the clones come from, snapshotted after one call.
  const template = vmm.createVM({ image });
  await template.start();
  await template.call('template');
  const snapshot = await template.snapshot();

  const bench = new Bench({ time: 2000, warmupTime: 300 });
  bench
    .add('cold boot to first reply', async () => {
      const vm = cold.createVM({ image: coldImage });
      const starting = vm.start();
      await vm.call('x');
      await starting;
      vm.destroy();
    })
    .add('clone to first reply (reused context)', async () => {
      const vm = vmm.createVM({ snapshot });
      const starting = vm.start();
      await vm.call('x');
      await starting;
      vm.destroy();
    });
  process.stderr.write('running cold boot and clone tasks (about 5 s)\n');
  await bench.warmup();
  await bench.run();
  const results: Record<string, LatencyFigure> = {};
  for (const task of bench.tasks) results[task.name] = latencyFigure(task.result?.samples ?? []);

  // Save and load throughput, over the bytes the file holds.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-bench-'));
  const file = path.join(dir, 'counter.snap');
  const saves: number[] = [];
  const loads: number[] = [];
  for (let i = 0; i < 20; i++) {
    let t0 = nowUs();
    await snapshot.save(file);
    saves.push(nowUs() - t0);
    t0 = nowUs();
    await vmm.loadSnapshot(file);
    loads.push(nowUs() - t0);
  }
  const stored = snapshot.memoryBytes;
  const saveMiBPerSec = stored / 2 ** 20 / (percentile(saves, 0.5) / 1e6);
  const loadMiBPerSec = stored / 2 ** 20 / (percentile(loads, 0.5) / 1e6);
  fs.rmSync(dir, { recursive: true, force: true });
  await vmm.close();
  await cold.close();

  process.stderr.write(`running the ${fleetVms}-clone fleet\n`);
  const fleet = await runFleet({ vms: fleetVms, clone: true, concurrency: 1 });

  const coldP50 = results['cold boot to first reply'].p50Us;
  const reusedP50 = results['clone to first reply (reused context)'].p50Us;
  const rows = Object.entries(results).map(([name, f]) => ({ task: name, 'p50 (us)': f.p50Us, 'p99 (us)': f.p99Us, samples: f.samples }));
  rows.push({ task: `clone to first reply (prewarmed, ${fleetVms} resident)`, 'p50 (us)': fleet.cloneP50Us ?? 0, 'p99 (us)': fleet.cloneP99Us ?? 0, samples: fleetVms });
  console.table(rows);
  console.log(`snapshot: ${stored} bytes of memory; save p50 ${Math.round(percentile(saves, 0.5))} us (${saveMiBPerSec.toFixed(0)} MiB/s), load p50 ${Math.round(percentile(loads, 0.5))} us (${loadMiBPerSec.toFixed(0)} MiB/s)`);
  console.log(`fleet: prewarm ${fleet.prewarmMs} ms, private memory per idle clone ${fleet.privateBytesPerClone} bytes, cold boot p50 ${fleet.coldBootP50Us} us`);

  const targets = [
    { name: 'clone to first reply p50 (reused context)', value: reusedP50, limit: 150, unit: 'us' },
    { name: `clone to first reply p50 (prewarmed, ${fleetVms} resident)`, value: fleet.cloneP50Us ?? NaN, limit: 150, unit: 'us' },
    { name: 'cold boot / clone p50 (reused context)', value: coldP50 / reusedP50, limit: 8, unit: 'x', atLeast: true },
    { name: 'private memory per idle clone', value: fleet.privateBytesPerClone ?? NaN, limit: 64 * 1024, unit: 'bytes' },
  ];
  for (const t of targets) {
    const pass = t.atLeast ? t.value >= t.limit : t.value <= t.limit;
    const shown = t.unit === 'x' ? t.value.toFixed(1) : String(t.value);
    console.log(`${pass ? 'PASS' : 'MISS'} ${t.name}: ${shown} ${t.unit} (target ${t.atLeast ? '>=' : '<='} ${t.limit})`);
  }

  const record = {
    date: new Date().toISOString(),
    machine: { cpu: os.cpus()[0]?.model ?? 'unknown', cpus: os.cpus().length, kernel: os.release(), node: process.version },
    results,
    snapshot: { memoryBytes: stored, saveP50Us: Math.round(percentile(saves, 0.5)), loadP50Us: Math.round(percentile(loads, 0.5)), saveMiBPerSec, loadMiBPerSec },
    fleet,
    targets,
  };
  const outDir = path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const out = path.join(outDir, `clone-${record.date.replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(out, JSON.stringify(record, null, 2) + '\n');
  console.log(`results written to ${path.relative(process.cwd(), out)}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
