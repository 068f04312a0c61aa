// Balloon benchmark: a guest touches 64 MiB and frees it, the host inflates
// the balloon, then deflates it. Prints the figures and writes
// bench/results/balloon-<timestamp>.json and .svg (host memory over time).
import * as fs from 'node:fs';
import * as path from 'node:path';

import { balloonChartSvg, runBalloonBench } from '../lib/balloon-bench';

async function main(): Promise<void> {
  const result = await runBalloonBench();
  const { samples, ...figures } = result;
  console.log(figures);
  const share = result.reclaimedBytes / result.touchedBytes;
  console.log(`${share >= 0.9 ? 'PASS' : 'MISS'} reclaimed share of touched memory: ${(share * 100).toFixed(1)}% (target >= 90%)`);

  const date = new Date().toISOString();
  const stem = `balloon-${date.replace(/[:.]/g, '-')}`;
  const dir = path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, `${stem}.json`), JSON.stringify({ date, ...figures, samples }, null, 2) + '\n');
  fs.writeFileSync(path.join(dir, `${stem}.svg`), balloonChartSvg(result, `Balloon: ${result.touchedBytes / 2 ** 20} MiB touched, freed, reclaimed`));
  console.log(`results written to bench/results/${stem}.json and .svg`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
