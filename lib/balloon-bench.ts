import { bundledGuest } from './guests';
import { nowUs, rssBytes } from './measure';
import { VMM } from './vmm';
import type { VM } from './vm';

const MiB = 1024 * 1024;

/** One sample of host memory during a balloon run. */
export interface MemorySample {
  /** Milliseconds since the run started. */
  ms: number;
  /** Private guest memory of the VM, in bytes. */
  privateBytes: number;
  /** Resident set size of this process, in bytes. */
  rssBytes: number;
  phase: 'touch' | 'free' | 'inflate' | 'deflate' | 'retouch';
}

/** Figures measured by {@link runBalloonBench}. */
export interface BalloonBenchResult {
  /** Bytes the guest allocated, touched and freed. */
  touchedBytes: number;
  /** Private host memory the balloon freed. */
  reclaimedBytes: number;
  /** Private guest memory after the guest freed its block, before inflating. */
  privateBytesBefore: number;
  /** Private guest memory once the balloon reached its target. */
  privateBytesAfter: number;
  /** Reclaimed MiB per second of inflating. */
  reclaimMiBPerSec: number;
  /** Milliseconds from setBalloon() to the balloon reaching its target. */
  inflateMs: number;
  /** Milliseconds from setBalloon(0) to the balloon being empty. */
  deflateMs: number;
  /** Whether the guest's memory checked out after deflating and touching it again. */
  verified: boolean;
  samples: MemorySample[];
}

async function pollUntil(vm: VM, done: () => boolean, record: () => void, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`the balloon did not settle within ${timeoutMs} ms`);
    record();
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  record();
  void vm;
}

/**
 * Runs the balloon benchmark: a `test-balloon` guest touches `touchBytes`
 * and frees them without reporting them, the host inflates the balloon to
 * that size, then deflates it and the guest touches the memory again.
 * Host memory is sampled throughout.
 *
 * @example
 * ```ts
 * const result = await runBalloonBench();
 * console.log(result.reclaimedBytes / result.touchedBytes);
 * ```
 */
export async function runBalloonBench(options: { touchBytes?: number; memory?: string } = {}): Promise<BalloonBenchResult> {
  const touchBytes = options.touchBytes ?? 64 * MiB;
  const vmm = new VMM({ idleMs: 0 });
  const samples: MemorySample[] = [];
  const started = nowUs();
  try {
    const vm = vmm.createVM({ image: await vmm.loadImage(bundledGuest('test-balloon')), memory: options.memory ?? '128M' });
    let phase: MemorySample['phase'] = 'touch';
    const record = (): void => {
      samples.push({ ms: (nowUs() - started) / 1000, privateBytes: vm.memoryStats().privateBytes, rssBytes: rssBytes(), phase });
    };
    const call = async (request: string): Promise<string> => new TextDecoder().decode(await vm.call(request));
    await vm.start();
    record();
    const touched = await call(`touch ${touchBytes}`);
    if (!touched.startsWith('ok')) throw new Error(`the guest could not touch ${touchBytes} bytes: ${touched}`);
    record();
    phase = 'free';
    await call('free');
    record();
    const privateBytesBefore = vm.memoryStats().privateBytes;

    phase = 'inflate';
    const t0 = nowUs();
    vm.setBalloon(touchBytes);
    await pollUntil(vm, () => vm.balloonStats().actual >= touchBytes, record, 10000);
    const inflateMs = (nowUs() - t0) / 1000;
    const stats = vm.balloonStats();
    const privateBytesAfter = vm.memoryStats().privateBytes;

    phase = 'deflate';
    const t1 = nowUs();
    vm.setBalloon(0);
    await pollUntil(vm, () => vm.balloonStats().actual === 0, record, 10000);
    const deflateMs = (nowUs() - t1) / 1000;

    phase = 'retouch';
    const again = await call(`touch ${touchBytes}`);
    record();
    const verified = again.startsWith('ok') && (await call('verify')) === 'ok';
    record();
    return {
      touchedBytes: touchBytes,
      reclaimedBytes: stats.reclaimed,
      privateBytesBefore,
      privateBytesAfter,
      reclaimMiBPerSec: Math.round(stats.reclaimed / MiB / Math.max(inflateMs / 1000, 1e-6)),
      inflateMs: Math.round(inflateMs * 10) / 10,
      deflateMs: Math.round(deflateMs * 10) / 10,
      verified,
      samples,
    };
  } finally {
    await vmm.close();
  }
}

/**
 * Draws the samples of a balloon run as an SVG line chart: private guest
 * memory and process RSS in MiB over time, with the phases shaded.
 */
export function balloonChartSvg(result: BalloonBenchResult, title: string): string {
  const width = 760;
  const height = 360;
  const left = 60;
  const right = 20;
  const top = 40;
  const bottom = 50;
  const samples = result.samples;
  const maxMs = Math.max(1, ...samples.map((s) => s.ms));
  const maxMiB = Math.max(1, ...samples.map((s) => Math.max(s.privateBytes, s.rssBytes) / MiB)) * 1.1;
  const x = (ms: number): number => left + (ms / maxMs) * (width - left - right);
  const y = (mib: number): number => height - bottom - (mib / maxMiB) * (height - top - bottom);
  const line = (pick: (s: MemorySample) => number): string =>
    samples.map((s) => `${x(s.ms).toFixed(1)},${y(pick(s) / MiB).toFixed(1)}`).join(' ');
  const colors: Record<MemorySample['phase'], string> = {
    touch: '#eef3ff',
    free: '#f4f4f4',
    inflate: '#e8f7ea',
    deflate: '#fff4e0',
    retouch: '#eef3ff',
  };
  const bands: string[] = [];
  for (let i = 0; i < samples.length; i++) {
    const start = samples[i];
    let j = i;
    while (j + 1 < samples.length && samples[j + 1].phase === start.phase) j++;
    const end = j + 1 < samples.length ? samples[j + 1].ms : samples[j].ms;
    bands.push(
      `<rect x="${x(start.ms).toFixed(1)}" y="${top}" width="${Math.max(1, x(end) - x(start.ms)).toFixed(1)}" height="${height - top - bottom}" fill="${colors[start.phase]}"/>`,
      `<text x="${(x(start.ms) + 3).toFixed(1)}" y="${top + 14}" font-size="11" fill="#555">${start.phase}</text>`,
    );
    i = j;
  }
  const ticks: string[] = [];
  for (let k = 0; k <= 4; k++) {
    const mib = (maxMiB * k) / 4;
    ticks.push(`<text x="${left - 8}" y="${(y(mib) + 4).toFixed(1)}" font-size="11" text-anchor="end">${mib.toFixed(0)}</text>`);
    const ms = (maxMs * k) / 4;
    ticks.push(`<text x="${x(ms).toFixed(1)}" y="${height - bottom + 16}" font-size="11" text-anchor="middle">${ms.toFixed(0)}</text>`);
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    ...bands,
    `<text x="${width / 2}" y="22" font-size="14" text-anchor="middle">${title}</text>`,
    `<line x1="${left}" y1="${height - bottom}" x2="${width - right}" y2="${height - bottom}" stroke="#333"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${height - bottom}" stroke="#333"/>`,
    ...ticks,
    `<text x="${width / 2}" y="${height - 12}" font-size="12" text-anchor="middle">time (ms)</text>`,
    `<text x="16" y="${height / 2}" font-size="12" transform="rotate(-90 16 ${height / 2})" text-anchor="middle">MiB</text>`,
    `<polyline fill="none" stroke="#1f5fd1" stroke-width="2" points="${line((s) => s.privateBytes)}"/>`,
    `<polyline fill="none" stroke="#d1521f" stroke-width="1.5" stroke-dasharray="4 3" points="${line((s) => s.rssBytes)}"/>`,
    `<text x="${width - right - 210}" y="${top + 30}" font-size="12" fill="#1f5fd1">VM private memory</text>`,
    `<text x="${width - right - 210}" y="${top + 46}" font-size="12" fill="#d1521f">process RSS</text>`,
    '</svg>',
    '',
  ].join('\n');
}
