import { bundledGuest } from './guests';
import { memAvailableBytes, nowUs, percentile, rssBytes } from './measure';
import { VMM } from './vmm';
import type { Snapshot } from './snapshot';
import type { VM } from './vm';

/** Options of {@link runFleet}. */
export interface FleetOptions {
  /** VMs to boot. Default: 1,000. */
  vms?: number;
  /** VMs booting at once. Default: the VMM's worker count. */
  concurrency?: number;
  /** Guest RAM of each VM. Default: '16M'. */
  memory?: number | string;
  /**
   * Boot one VM, snapshot it after its first call and create the fleet as
   * clones of that snapshot; also cold-boot `coldSample` VMs for comparison.
   */
  clone?: boolean;
  /** VMs cold-booted for comparison in a clone run. Default: 50. */
  coldSample?: number;
  /** Called after each VM has replied, with the number done. */
  onProgress?: (done: number, total: number) => void;
}

/** Figures measured by {@link runFleet}. Latencies are microseconds. */
export interface FleetResult {
  vms: number;
  /** Distinct VM ids among the replies; equals `vms` when every reply was right. */
  distinctReplies: number;
  /** Replies whose id differed from the VM's own id. */
  wrongReplies: number;
  /** Create to first reply, median. */
  bootP50Us: number;
  bootP99Us: number;
  /** VMs booted and replied per second of wall time. */
  bootsPerSecond: number;
  /** Drop of MemAvailable with all VMs resident, divided by `vms`. */
  hostBytesPerVm: number;
  /** Growth of this process's RSS with all VMs resident, divided by `vms`. */
  rssBytesPerVm: number;
  /** Wall time of the whole run, in milliseconds. */
  elapsedMs: number;
  /** Clone runs: clone to first reply, in a context built by vmm.prewarm(). */
  cloneP50Us?: number;
  cloneP99Us?: number;
  /** Clone runs: cold boot to first reply of the comparison sample, median. */
  coldBootP50Us?: number;
  /** Clone runs: private guest memory per idle clone, after its first reply. */
  privateBytesPerClone?: number;
  /** Clone runs: time vmm.prewarm() took to build the contexts, in milliseconds. */
  prewarmMs?: number;
}

interface CounterReply {
  id: number;
  count: number;
}

/**
 * Boots a fleet of `counter` VMs, calls each once, checks that each reply
 * carries that VM's own id, measures boot latency and host memory with the
 * whole fleet resident, and destroys every VM.
 *
 * @throws VMMError from the engine, or Error when a reply is malformed
 * @example
 * ```ts
 * const result = await runFleet({ vms: 100 });
 * console.log(result.bootP50Us);
 * ```
 */
export async function runFleet(options: FleetOptions = {}): Promise<FleetResult> {
  const total = options.vms ?? 1000;
  // The fleet stays resident until it is measured: no idle hibernation, and
  // a context cap above the fleet's size, up to the option's maximum of
  // 100,000 (the CLI allows at most 20,000 VMs).
  const vmm = new VMM({ idleMs: 0, maxResident: Math.min(total + 64, 100_000) });
  const concurrency = Math.max(1, options.concurrency ?? vmm.options.workers);
  const memory = options.memory ?? '16M';
  const fleet: VM[] = [];
  try {
    const image = await vmm.loadImage(bundledGuest('counter'));
    let snapshot: Snapshot | undefined;
    let coldBootP50Us: number | undefined;
    let prewarmMs: number | undefined;
    let availableBefore = memAvailableBytes();
    let rssBefore = rssBytes();
    if (options.clone) {
      coldBootP50Us = await coldBootSample(memory, options.coldSample ?? 50);
      availableBefore = memAvailableBytes();
      rssBefore = rssBytes();
      const template = vmm.createVM({ image, memory });
      await template.start();
      await template.call('template');
      snapshot = await template.snapshot();
      template.destroy();
      const t0 = nowUs();
      await vmm.prewarm(snapshot, total);
      prewarmMs = Math.round((nowUs() - t0) / 1000);
    }
    const latencies: number[] = [];
    const ids = new Set<number>();
    // A clone continues the template's count: it has served one call.
    const expectedCount = snapshot ? 2 : 1;
    let wrongReplies = 0;
    let next = 0;
    let done = 0;
    const started = nowUs();

    const bootOne = async (): Promise<void> => {
      const t0 = nowUs();
      const vm = snapshot ? vmm.createVM({ snapshot }) : vmm.createVM({ image, memory });
      fleet.push(vm);
      // start() and call() together: the message waits in the VM's queue
      // and is served by the first run, with no extra round trip.
      const starting = vm.start();
      const reply = JSON.parse(new TextDecoder().decode(await vm.call('fleet'))) as CounterReply;
      await starting;
      latencies.push(nowUs() - t0);
      if (reply.id === vm.id && reply.count === expectedCount) ids.add(reply.id);
      else wrongReplies++;
      done++;
      options.onProgress?.(done, total);
    };
    const lane = async (): Promise<void> => {
      while (next < total) {
        next++;
        await bootOne();
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, total) }, lane));
    const elapsedUs = nowUs() - started;

    // Give the kernel a moment to settle its counters before reading them.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const hostBytes = availableBefore - memAvailableBytes();
    const rssGrowth = rssBytes() - rssBefore;
    const result: FleetResult = {
      vms: total,
      distinctReplies: ids.size,
      wrongReplies,
      bootP50Us: Math.round(percentile(latencies, 0.5)),
      bootP99Us: Math.round(percentile(latencies, 0.99)),
      bootsPerSecond: Math.round((total * 1e6) / elapsedUs),
      hostBytesPerVm: Math.round(hostBytes / total),
      rssBytesPerVm: Math.round(rssGrowth / total),
      elapsedMs: Math.round(elapsedUs / 1000),
    };
    if (snapshot) {
      let privateBytes = 0;
      for (const vm of fleet) privateBytes += vm.memoryStats().privateBytes;
      result.cloneP50Us = result.bootP50Us;
      result.cloneP99Us = result.bootP99Us;
      result.coldBootP50Us = coldBootP50Us;
      result.privateBytesPerClone = Math.round(privateBytes / total);
      result.prewarmMs = prewarmMs;
    }
    return result;
  } finally {
    for (const vm of fleet) vm.destroy();
    await vmm.close();
  }
}

/**
 * Cold-boots `count` VMs one at a time, each in a new KVM context (a VMM
 * without a context pool), and returns the median create-to-first-reply
 * time in microseconds.
 */
async function coldBootSample(memory: number | string, count: number): Promise<number> {
  const vmm = new VMM({ poolSize: 0, idleMs: 0 });
  try {
    const image = await vmm.loadImage(bundledGuest('counter'));
    const latencies: number[] = [];
    for (let i = 0; i < count; i++) {
      const t0 = nowUs();
      const vm = vmm.createVM({ image, memory });
      const starting = vm.start();
      await vm.call('sample');
      await starting;
      latencies.push(nowUs() - t0);
      vm.destroy();
    }
    return Math.round(percentile(latencies, 0.5));
  } finally {
    await vmm.close();
  }
}
