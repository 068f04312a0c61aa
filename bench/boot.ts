// Boot benchmark: cold boot to first reply, call round trip on a resident VM
// (counter, and echo for the engine's own cost), and the 1,000-VM fleet.
// Prints a table and writes bench/results/boot-<timestamp>.json.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Bench } from 'tinybench';

import { VMM, bundledGuest, runFleet } from '../lib/index';
import { latencyFigure } from '../lib/measure';
import type { LatencyFigure } from '../lib/measure';

interface Target {
  name: string;
  value: number;
  limit: number;
  unit: string;
}

function machine(): Record<string, string | number> {
  const cpu = os.cpus()[0]?.model ?? 'unknown';
  let kvmModule = 'unknown';
  try {
    const modules = fs.readFileSync('/proc/modules', 'utf8');
    kvmModule = ['kvm_pvm', 'kvm_intel', 'kvm_amd'].find((name) => modules.includes(`${name} `)) ?? 'none listed';
  } catch {
    // /proc/modules is absent in some containers; the module stays unknown.
  }
  return {
    cpu,
    cpus: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    kvmModule,
    node: process.version,
  };
}

async function main(): Promise<void> {
  const fleetVms = Number(process.env.BENCH_FLEET_VMS ?? 1000);
  // No context pool: every boot below creates its KVM VM, as a cold boot does.
  const vmm = new VMM({ poolSize: 0, idleMs: 0 });
  const counter = await vmm.loadImage(bundledGuest('counter'));
  const echo = await vmm.loadImage(bundledGuest('echo'));

  const resident = vmm.createVM({ image: counter });
  await resident.start();
  const residentEcho = vmm.createVM({ image: echo });
  await residentEcho.start();
  const payload = new TextEncoder().encode('ping');

  const bench = new Bench({ time: 2000, warmupTime: 300 });
  bench
    .add('cold boot to first reply', async () => {
      const vm = vmm.createVM({ image: counter });
      await vm.start();
      await vm.call(payload);
      vm.destroy();
    })
    .add('call round trip (counter)', async () => {
      await resident.call(payload);
    })
    .add('call round trip (echo)', async () => {
      await residentEcho.call(payload);
    });
  process.stderr.write('running boot and round-trip tasks (about 10 s)\n');
  await bench.warmup();
  await bench.run();

  const results: Record<string, LatencyFigure> = {};
  for (const task of bench.tasks) {
    results[task.name] = latencyFigure(task.result?.samples ?? []);
  }
  await vmm.close();

  process.stderr.write(`running the ${fleetVms}-VM fleet\n`);
  const fleet = await runFleet({ vms: fleetVms });

  const cold = results['cold boot to first reply'];
  const call = results['call round trip (counter)'];
  const targets: Target[] = [
    { name: 'cold boot to first reply p50', value: cold.p50Us, limit: 2000, unit: 'us' },
    { name: 'call round trip p50', value: call.p50Us, limit: 100, unit: 'us' },
    { name: 'host memory per resident VM', value: fleet.hostBytesPerVm, limit: 1024 * 1024, unit: 'bytes' },
    { name: `${fleetVms}-VM fleet wall time`, value: fleet.elapsedMs, limit: 10000, unit: 'ms' },
  ];

  const rows = Object.entries(results).map(([name, f]) => ({ task: name, 'p50 (us)': f.p50Us, 'p99 (us)': f.p99Us, samples: f.samples }));
  console.table(rows);
  console.log(
    `fleet: ${fleet.vms} VMs in ${fleet.elapsedMs} ms, boot p50 ${fleet.bootP50Us} us, p99 ${fleet.bootP99Us} us, ` +
      `${fleet.bootsPerSecond} boots/s, ${fleet.hostBytesPerVm} bytes/VM (MemAvailable), ${fleet.rssBytesPerVm} bytes/VM (RSS)`,
  );
  for (const t of targets) {
    console.log(`${t.value <= t.limit ? 'PASS' : 'MISS'} ${t.name}: ${t.value} ${t.unit} (target <= ${t.limit})`);
  }

  const record = { date: new Date().toISOString(), machine: machine(), results, fleet, targets };
  const dir = path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `boot-${record.date.replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify(record, null, 2) + '\n');
  console.log(`results written to ${path.relative(process.cwd(), file)}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
