import { bundledGuest } from './guests';
import { memAvailableBytes, nowUs, percentile, rssBytes } from './measure';
import { VMM } from './vmm';
import type { VM } from './vm';

/** Options of {@link runDensity}. */
export interface DensityOptions {
  /** Clones to create. Default: 1,000,000. */
  vms?: number;
  /** Clones called again after they hibernated. Default: 10,000 (at most `vms`). */
  sample?: number;
  /** First calls in flight at once. Default: 64. */
  concurrency?: number;
  /** Passed to the VMM; the engine's default when omitted. */
  maxResident?: number;
  /** Idle time before a VM hibernates, in ms. Default: 100. */
  idleMs?: number;
  /** Called as clones reply, with the phase and the number done. */
  onProgress?: (phase: 'first calls' | 'hibernating' | 'wake sample', done: number, total: number) => void;
}

/** Figures measured by {@link runDensity}. Latencies are microseconds. */
export interface DensityResult {
  vms: number;
  sampled: number;
  /** Replies that carried the VM's own id and the expected count, first and second call. */
  verified: number;
  /** Drop of MemAvailable with every clone idle, divided by `vms`. */
  hostBytesPerIdleVm: number;
  /** Growth of this process's RSS with every clone idle, divided by `vms`. */
  rssBytesPerIdleVm: number;
  /** Call on a hibernated clone to its reply: median. */
  wakeP50Us: number;
  wakeP99Us: number;
  firstCallsPerSecond: number;
  /** Most KVM contexts alive at once. */
  maxResident: number;
  /** The context cap in force. */
  residentCap: number;
  /** Page store bytes per hibernated clone. */
  pageStoreBytesPerVm: number;
  hibernated: number;
  elapsedMs: number;
}

interface CounterReply {
  id: number;
  count: number;
}

const decoder = new TextDecoder();

function parse(bytes: Uint8Array): CounterReply {
  return JSON.parse(decoder.decode(bytes)) as CounterReply;
}

/**
 * Runs the density benchmark. It snapshots the counter guest after boot,
 * creates `vms` clones and calls each once; each must reply with its own id
 * and count 1. Once they hibernate, it calls a random sample again, and each
 * must reply with its own id and count 2. It measures host memory per idle
 * VM, wake latency and first-call throughput.
 *
 * @example
 * ```ts
 * const result = await runDensity({ vms: 100000 });
 * ```
 */
export async function runDensity(options: DensityOptions = {}): Promise<DensityResult> {
  const total = options.vms ?? 1_000_000;
  const sampleSize = Math.min(options.sample ?? 10_000, total);
  const concurrency = options.concurrency ?? 64;
  const idleMs = options.idleMs ?? 100;
  const vmm = new VMM({ maxResident: options.maxResident, idleMs });
  const started = nowUs();
  try {
    const image = await vmm.loadImage(bundledGuest('counter'));
    const template = vmm.createVM({ image });
    await template.start();
    // Snapshot once the guest waits for its first message, so clones reply
    // with count 1.
    while (template.state !== 'waiting' && template.state !== 'hibernated') {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    const snapshot = await template.snapshot();
    template.destroy();
    await new Promise((resolve) => setTimeout(resolve, 200));

    const availableBefore = memAvailableBytes();
    const rssBefore = rssBytes();
    const clones: VM[] = new Array(total);
    let verified = 0;
    let next = 0;
    let done = 0;
    const t0 = nowUs();
    const firstCall = async (): Promise<void> => {
      while (next < total) {
        const index = next++;
        const vm = vmm.createVM({ snapshot });
        clones[index] = vm;
        const starting = vm.start();
        const reply = parse(await vm.call('first'));
        await starting;
        if (reply.id === vm.id && reply.count === 1) verified++;
        done++;
        if (done % 1000 === 0 || done === total) options.onProgress?.('first calls', done, total);
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, total) }, firstCall));
    const firstCallsPerSecond = Math.round((total * 1e6) / (nowUs() - t0));

    // Every clone waits now. Give them time to hibernate, and the engine
    // time to close the pooled contexts they left beyond poolSize (one
    // second unused), so that the figure is for the engine at rest.
    for (;;) {
      const stats = vmm.stats();
      options.onProgress?.('hibernating', stats.hibernated, total);
      if (stats.hibernated >= total && stats.residentContexts <= vmm.options.poolSize) break;
      await new Promise((resolve) => setTimeout(resolve, Math.max(50, idleMs)));
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    const stats = vmm.stats();
    const hostBytes = availableBefore - memAvailableBytes();
    const rssGrowth = rssBytes() - rssBefore;

    // Wake a random sample, one at a time, so each latency is its own.
    const latencies: number[] = [];
    for (let i = 0; i < sampleSize; i++) {
      const vm = clones[Math.floor(Math.random() * total)];
      const t = nowUs();
      const reply = parse(await vm.call('again'));
      latencies.push(nowUs() - t);
      // A VM drawn twice has served one more call.
      if (reply.id === vm.id && reply.count >= 2) verified++;
      if ((i + 1) % 500 === 0 || i + 1 === sampleSize) options.onProgress?.('wake sample', i + 1, sampleSize);
    }
    const after = vmm.stats();
    return {
      vms: total,
      sampled: sampleSize,
      verified,
      hostBytesPerIdleVm: Math.round(hostBytes / total),
      rssBytesPerIdleVm: Math.round(rssGrowth / total),
      wakeP50Us: Math.round(percentile(latencies, 0.5)),
      wakeP99Us: Math.round(percentile(latencies, 0.99)),
      firstCallsPerSecond,
      maxResident: after.maxResidentReached,
      residentCap: after.maxResident,
      pageStoreBytesPerVm: Math.round(stats.pageStoreBytes / Math.max(1, stats.hibernated)),
      hibernated: stats.hibernated,
      elapsedMs: Math.round((nowUs() - started) / 1000),
    };
  } finally {
    await vmm.close();
  }
}
