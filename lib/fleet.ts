import { bundledGuest } from './guests';
import { memAvailableBytes, nowUs, percentile, rssBytes } from './measure';
import { VMM } from './vmm';
import type { VM } from './vm';

/** Options of {@link runFleet}. */
export interface FleetOptions {
  /** VMs to boot. Default: 1,000. */
  vms?: number;
  /** VMs booting at once. Default: the VMM's worker count. */
  concurrency?: number;
  /** Guest RAM of each VM. Default: '16M'. */
  memory?: number | string;
  /** Called after each VM has replied, with the number done. */
  onProgress?: (done: number, total: number) => void;
}

/** What {@link runFleet} measured. Latencies are microseconds. */
export interface FleetResult {
  vms: number;
  /** Distinct VM ids among the replies; equals `vms` when every reply was right. */
  distinctReplies: number;
  /** Replies whose id differed from the VM's own id. */
  wrongReplies: number;
  /** Create to first reply, median. */
  bootP50Us: number;
  bootP99Us: number;
  /** VMs booted and answered per second of wall time. */
  bootsPerSecond: number;
  /** Drop of MemAvailable with all VMs resident, divided by `vms`. */
  hostBytesPerVm: number;
  /** Growth of this process's RSS with all VMs resident, divided by `vms`. */
  rssBytesPerVm: number;
  /** Wall time of the whole run, in milliseconds. */
  elapsedMs: number;
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
  const vmm = new VMM();
  const concurrency = Math.max(1, options.concurrency ?? vmm.options.workers);
  const memory = options.memory ?? '16M';
  const fleet: VM[] = [];
  try {
    const image = await vmm.loadImage(bundledGuest('counter'));
    const availableBefore = memAvailableBytes();
    const rssBefore = rssBytes();
    const latencies: number[] = [];
    const ids = new Set<number>();
    let wrongReplies = 0;
    let next = 0;
    let done = 0;
    const started = nowUs();

    const bootOne = async (): Promise<void> => {
      const t0 = nowUs();
      const vm = vmm.createVM({ image, memory });
      fleet.push(vm);
      await vm.start();
      const reply = JSON.parse(new TextDecoder().decode(await vm.call('fleet'))) as CounterReply;
      latencies.push(nowUs() - t0);
      if (reply.id === vm.id && reply.count === 1) ids.add(reply.id);
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
    return {
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
  } finally {
    for (const vm of fleet) vm.destroy();
    await vmm.close();
  }
}
