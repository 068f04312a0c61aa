import * as fs from 'node:fs';

/**
 * Value at quantile `q` (0-1) of `values`, by the nearest-rank method.
 * Returns NaN for an empty list.
 *
 * @example percentile([3, 1, 2], 0.5) // 2
 */
export function percentile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil(q * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

/** Median and 99th percentile of a benchmark's samples, in microseconds. */
export interface LatencyFigure {
  p50Us: number;
  p99Us: number;
  samples: number;
}

/** Summarizes tinybench samples, which are in milliseconds. */
export function latencyFigure(samplesMs: readonly number[]): LatencyFigure {
  return {
    p50Us: Math.round(percentile(samplesMs, 0.5) * 1000),
    p99Us: Math.round(percentile(samplesMs, 0.99) * 1000),
    samples: samplesMs.length,
  };
}

/** MemAvailable from /proc/meminfo, in bytes. */
export function memAvailableBytes(): number {
  const match = /^MemAvailable:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return match ? Number(match[1]) * 1024 : NaN;
}

/** Resident set size of this process, in bytes. */
export function rssBytes(): number {
  const pages = Number(fs.readFileSync('/proc/self/statm', 'utf8').split(' ')[1]);
  return pages * 4096;
}

/** Monotonic time in microseconds. */
export function nowUs(): number {
  return Number(process.hrtime.bigint()) / 1000;
}

/**
 * Reports progress on a stream: one rewritten line on a terminal, a line
 * per 10% otherwise (so CI logs stay short).
 */
export class Progress {
  readonly #stream: NodeJS.WriteStream;
  readonly #label: string;
  readonly #total: number;
  #lastDecile = -1;

  constructor(stream: NodeJS.WriteStream, label: string, total: number) {
    this.#stream = stream;
    this.#label = label;
    this.#total = total;
  }

  /** Reports `done` of the total. */
  update(done: number): void {
    const pct = this.#total === 0 ? 100 : Math.floor((done * 100) / this.#total);
    if (this.#stream.isTTY) {
      const width = 30;
      const filled = Math.round((pct / 100) * width);
      this.#stream.write(`\r${this.#label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${this.#total}`);
      if (done >= this.#total) this.#stream.write('\n');
      return;
    }
    const decile = Math.floor(pct / 10);
    if (decile !== this.#lastDecile) {
      this.#lastDecile = decile;
      this.#stream.write(`${this.#label}: ${done}/${this.#total} (${pct}%)\n`);
    }
  }
}
