#!/usr/bin/env node
// The `vmm` command: run a guest, list the bundled guests, boot a fleet.
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';

import { VMMError } from './errors';
import { balloonChartSvg, runBalloonBench } from './balloon-bench';
import { runDensity } from './density';
import { runFleet } from './fleet';
import { bundledGuest, listGuests } from './guests';
import { Progress } from './measure';
import { VMM } from './vmm';

const USAGE = `Usage:
  vmm run <image> [--memory SIZE] [--cmdline STR]
      Boot a guest image (a path, or the name of a bundled guest) and stream
      its console to stdout. The exit status is the guest's exit code; a crash
      or fault prints its reason to stderr and exits with status 70.
      --memory SIZE   guest RAM, e.g. 16M or 64MiB (default 16M, multiple of 2M)
      --cmdline STR   command line the guest reads (default empty)

  vmm guests
      Print each bundled guest: its name, a tab, its absolute path.

  vmm fleet [--vms N] [--concurrency N] [--clone] [--json]
      Boot N counter VMs (default 1000), call each once, check each reply
      carries its own VM id, print boot latency p50/p99, boots per second and
      host memory per VM, then destroy them. Progress goes to stderr.
      --clone         boot one VM, snapshot it after its first call, and
                      create the fleet as clones; also cold-boot 50 VMs
                      for comparison and report private memory per clone
      --json          end with one line of JSON on stdout

  vmm density [--vms N] [--sample N] [--max-resident N] [--json]
      Snapshot the counter guest after boot, create N clones (default
      1,000,000) and call each once, let them hibernate, then call a random
      sample (default 10,000) again. Prints host memory per idle VM, wake
      latency p50/p99, first calls per second and the most KVM contexts
      resident at once, with progress on stderr.
      --json          end with one line of JSON on stdout

  vmm bench balloon [--json] [--svg FILE]
      A guest touches 64 MiB and frees it, the host inflates the balloon and
      deflates it again. Prints the bytes touched and reclaimed, private
      memory before and after, and the reclaim rate.
      --json          end with one line of JSON on stdout
      --svg FILE      also draw host memory over time into FILE

  vmm help
      Print this text.
`;

/** Exit status for a guest that crashed, faulted or was killed (EX_SOFTWARE). */
const EXIT_CRASH = 70;
/** Exit status for invalid command-line usage. */
const EXIT_USAGE = 2;

class UsageError extends Error {}

function positiveInteger(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < 1) {
    throw new UsageError(`--${name} must be a positive integer, received '${value}'`);
  }
  return Number(value);
}

async function runCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { memory: { type: 'string' }, cmdline: { type: 'string' } },
  });
  if (positionals.length !== 1) throw new UsageError('vmm run takes one image path or bundled guest name');
  const target = positionals[0];
  // A bare name such as "hello" is a bundled guest; anything with a slash
  // or an .elf suffix is a path, reported as unreadable if it is missing.
  const isPath = target.includes('/') || target.endsWith('.elf');
  const path = isPath ? target : bundledGuest(target);

  const vmm = new VMM();
  try {
    const image = await vmm.loadImage(path);
    const vm = vmm.createVM({ image, memory: values.memory, cmdline: values.cmdline ?? '' });
    vm.on('console', (text) => process.stdout.write(text));
    const onSignal = (): void => {
      void vm.kill();
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    await vm.start();
    const exit = await vm.wait();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (exit.reason === 'exit') return exit.code;
    const detail = exit.detail;
    process.stderr.write(`vmm: guest ${exit.reason}: ${detail.message}\n`);
    if (detail.registers) {
      const regs = Object.entries(detail.registers)
        .map(([name, value]) => `${name}=${value}`)
        .join(' ');
      process.stderr.write(`vmm: registers: ${regs}\n`);
    }
    return EXIT_CRASH;
  } finally {
    await vmm.close();
  }
}

function guestsCommand(args: string[]): number {
  if (args.length > 0) throw new UsageError('vmm guests takes no arguments');
  for (const guest of listGuests()) process.stdout.write(`${guest.name}\t${guest.path}\n`);
  return 0;
}

async function fleetCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      vms: { type: 'string' },
      concurrency: { type: 'string' },
      clone: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const vms = positiveInteger('vms', values.vms, 1000);
  const concurrency = values.concurrency === undefined ? undefined : positiveInteger('concurrency', values.concurrency, 1);
  const progress = new Progress(process.stderr, values.clone ? 'cloning' : 'booting', vms);
  if (values.clone) process.stderr.write(`cold-booting 50 VMs for comparison, then prewarming ${vms} contexts\n`);
  const result = await runFleet({ vms, concurrency, clone: values.clone, onProgress: (done) => progress.update(done) });
  const kib = (bytes: number): string => `${(bytes / 1024).toFixed(1)} KiB`;
  process.stdout.write(
    [
      `VMs booted:           ${result.vms} in ${result.elapsedMs} ms`,
      `distinct replies:     ${result.distinctReplies} (wrong: ${result.wrongReplies})`,
      `boot to first reply:  p50 ${(result.bootP50Us / 1000).toFixed(2)} ms, p99 ${(result.bootP99Us / 1000).toFixed(2)} ms`,
      `boots per second:     ${result.bootsPerSecond}`,
      `host memory per VM:   ${kib(result.hostBytesPerVm)} (MemAvailable drop), ${kib(result.rssBytesPerVm)} (process RSS growth)`,
      ...(values.clone
        ? [
            `cold boot (sample):   p50 ${((result.coldBootP50Us ?? 0) / 1000).toFixed(2)} ms`,
            `clone speed-up:       ${((result.coldBootP50Us ?? 0) / Math.max(1, result.cloneP50Us ?? 1)).toFixed(1)}x (p50)`,
            `private per clone:    ${kib(result.privateBytesPerClone ?? 0)}`,
            `prewarm:              ${result.prewarmMs} ms for ${result.vms} contexts`,
          ]
        : []),
      '',
    ].join('\n'),
  );
  if (values.json) {
    const { vms: count, distinctReplies, bootP50Us, bootP99Us, bootsPerSecond, hostBytesPerVm, rssBytesPerVm } = result;
    const json: Record<string, number | undefined> = {
      vms: count,
      distinctReplies,
      bootP50Us,
      bootP99Us,
      bootsPerSecond,
      hostBytesPerVm,
      rssBytesPerVm,
    };
    if (values.clone) {
      json.cloneP50Us = result.cloneP50Us;
      json.cloneP99Us = result.cloneP99Us;
      json.coldBootP50Us = result.coldBootP50Us;
      json.privateBytesPerClone = result.privateBytesPerClone;
      json.prewarmMs = result.prewarmMs;
    }
    process.stdout.write(JSON.stringify(json) + '\n');
  }
  return result.distinctReplies === result.vms ? 0 : 1;
}

async function densityCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      vms: { type: 'string' },
      sample: { type: 'string' },
      'max-resident': { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const vms = positiveInteger('vms', values.vms, 1_000_000);
  const sample = positiveInteger('sample', values.sample, 10_000);
  const maxResident = values['max-resident'] === undefined ? undefined : positiveInteger('max-resident', values['max-resident'], 1);
  const bars = new Map<string, Progress>();
  const result = await runDensity({
    vms,
    sample,
    maxResident,
    onProgress: (phase, done, total) => {
      let bar = bars.get(phase);
      if (!bar) {
        bar = new Progress(process.stderr, phase, total);
        bars.set(phase, bar);
      }
      bar.update(done);
    },
  });
  const kib = (bytes: number): string => `${(bytes / 1024).toFixed(1)} KiB`;
  process.stdout.write(
    [
      `idle VMs:             ${result.vms} (${result.hibernated} hibernated), ${result.verified} of ${result.vms + result.sampled} replies verified`,
      `host memory per VM:   ${kib(result.hostBytesPerIdleVm)} (MemAvailable drop), ${kib(result.rssBytesPerIdleVm)} (process RSS growth)`,
      `page store per VM:    ${result.pageStoreBytesPerVm} bytes`,
      `wake (sample ${result.sampled}): p50 ${result.wakeP50Us} us, p99 ${result.wakeP99Us} us`,
      `first calls:          ${result.firstCallsPerSecond} per second`,
      `resident contexts:    at most ${result.maxResident} (cap ${result.residentCap})`,
      '',
    ].join('\n'),
  );
  if (values.json) {
    const { vms: count, sampled, verified, hostBytesPerIdleVm, wakeP50Us, wakeP99Us, firstCallsPerSecond } = result;
    process.stdout.write(
      JSON.stringify({ vms: count, sampled, verified, hostBytesPerIdleVm, wakeP50Us, wakeP99Us, firstCallsPerSecond, maxResident: result.maxResident }) + '\n',
    );
  }
  return result.verified === result.vms + result.sampled ? 0 : 1;
}

async function benchCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { json: { type: 'boolean', default: false }, svg: { type: 'string' } },
  });
  if (positionals.length !== 1 || positionals[0] !== 'balloon') {
    throw new UsageError(`vmm bench takes one benchmark name, 'balloon'; received '${positionals.join(' ')}'`);
  }
  process.stderr.write('touching 64 MiB in a guest, freeing it, inflating and deflating the balloon\n');
  const result = await runBalloonBench();
  const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  process.stdout.write(
    [
      `touched and freed:    ${mib(result.touchedBytes)}`,
      `reclaimed:            ${mib(result.reclaimedBytes)} (${((result.reclaimedBytes / result.touchedBytes) * 100).toFixed(1)}%)`,
      `private memory:       ${mib(result.privateBytesBefore)} before, ${mib(result.privateBytesAfter)} after`,
      `reclaim rate:         ${result.reclaimMiBPerSec} MiB/s (inflate ${result.inflateMs} ms, deflate ${result.deflateMs} ms)`,
      `memory after deflate: ${result.verified ? 'touched again and verified' : 'FAILED verification'}`,
      '',
    ].join('\n'),
  );
  if (values.svg) {
    fs.writeFileSync(values.svg, balloonChartSvg(result, 'Balloon: host memory over time'));
  }
  if (values.json) {
    const { touchedBytes, reclaimedBytes, privateBytesBefore, privateBytesAfter, reclaimMiBPerSec } = result;
    process.stdout.write(JSON.stringify({ touchedBytes, reclaimedBytes, privateBytesBefore, privateBytesAfter, reclaimMiBPerSec }) + '\n');
  }
  return result.verified ? 0 : 1;
}

/**
 * Runs the CLI with `argv` (without the node and script paths).
 *
 * @returns the process exit status
 */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'run':
        return await runCommand(rest);
      case 'guests':
        return guestsCommand(rest);
      case 'fleet':
        return await fleetCommand(rest);
      case 'bench':
        return await benchCommand(rest);
      case 'density':
        return await densityCommand(rest);
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return 0;
      case undefined:
        process.stderr.write(USAGE);
        return EXIT_USAGE;
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      process.stderr.write(`vmm: ${(err as Error).message}\nRun 'vmm help' for usage.\n`);
      return EXIT_USAGE;
    }
    if (err instanceof VMMError || err instanceof RangeError || err instanceof TypeError) {
      const code = (err as { code?: string }).code;
      process.stderr.write(`vmm: ${err.message}${code ? ` (${code})` : ''}\n`);
      return 1;
    }
    throw err;
  }
}

if (require.main === module) {
  // A closed pipe (`vmm guests | head -1`) ends the output, not the process.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  main(process.argv.slice(2)).then(
    (status) => {
      process.exitCode = status;
    },
    (err: unknown) => {
      process.stderr.write(`vmm: internal error: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
