#!/usr/bin/env node
// The `vmm` command: run a guest, list the bundled guests, boot a fleet.
import * as fs from 'node:fs';

import { VMMError } from './errors';
import { balloonChartSvg, runBalloonBench } from './balloon-bench';
import { UsageError, parseCommandArgs, positiveInteger } from './cli-args';
import { CommandError, checkWritable, writeOutputFile } from './cli-output';
import { runDensity } from './density';
import { runFleet } from './fleet';
import { bundledGuest, listGuests } from './guests';
import { Progress } from './measure';
import { VMM } from './vmm';

/**
 * Maximum of `vmm fleet --vms`. The fleet keeps every VM resident, at about
 * 0.6 MB of host memory and two file descriptors each (BENCHMARKS.md,
 * "Resident contexts"), so 20,000 VMs already need about 12 GB.
 */
const MAX_FLEET_VMS = 20_000;
/** Maximum of `vmm density --max-resident`, the maximum of the VMM's `maxResident` option. */
const MAX_RESIDENT = 100_000;

const USAGE = `Usage:
  vmm run <image> [--memory SIZE] [--cmdline STR]
      Boot a guest image and stream its console to stdout. <image> is a path
      (it contains '/' or ends in .elf) or the name of a bundled guest (see
      vmm guests): write ./NAME to run a file NAME in this directory.
      Guests that serve messages, such as counter and echo, wait for messages
      forever. This command sends none, so stop them with Ctrl-C.
      --memory SIZE   guest RAM, e.g. 16M or 64MiB (default 16M, multiple of 2M)
      --cmdline STR   command line the guest reads (default empty)

  vmm guests
      Print each bundled guest: its name, a tab, its absolute path, a tab
      and what it does.

  vmm fleet [--vms N] [--concurrency N] [--clone] [--json]
      Boot N counter VMs, call each once, check each reply carries its own VM
      id, print boot latency p50/p99, boots per second and host memory per VM,
      then destroy them. Progress goes to stderr.
      --vms N         VMs to boot (default 1,000, at most ${MAX_FLEET_VMS.toLocaleString('en-US')}). The whole
                      fleet stays resident, at about 0.6 MB of host memory and
                      two file descriptors per VM. For more VMs, use vmm density
      --concurrency N VMs booting at once (default: the number of worker
                      threads, one per CPU)
      --clone         boot one VM, snapshot it after its first call, and
                      create the fleet as clones; also cold-boot 50 VMs
                      for comparison and report private memory per clone
      --json          end with one line of JSON on stdout

  vmm density [--vms N] [--sample N] [--max-resident N] [--json]
      Snapshot the counter guest after boot, create N clones and call each
      once, let them hibernate, then call a random sample again. Prints host
      memory per idle VM, wake latency p50/p99, first calls per second and the
      most KVM contexts resident at once, with progress on stderr. At the
      default N it takes about 1.5 minutes (measured on 2 cores) and 2-3 GB
      of host memory.
      --vms N         clones to create (default 1,000,000)
      --sample N      hibernated clones to call again (default 10,000, at
                      most N)
      --max-resident N
                      maximum number of KVM contexts resident at once, from
                      1 to ${MAX_RESIDENT.toLocaleString('en-US')} (default: the engine's cap, 32 per
                      worker thread and at most 256)
      --json          end with one line of JSON on stdout

  vmm bench balloon [--json] [--svg FILE]
      A guest touches 64 MiB and frees it, the host inflates the balloon and
      deflates it again. Prints the bytes touched and reclaimed, private
      memory before and after, and the reclaim rate.
      --json          end with one line of JSON on stdout
      --svg FILE      also draw host memory over time into FILE, an SVG image

  vmm help
      Print this text.

Exit status:
  0    success
  N    vmm run: the guest's exit code
  1    any other error, such as a failed check in fleet, density or bench
  2    invalid command-line usage
  70   vmm run: the guest crashed, faulted or was killed, including by Ctrl-C
`;

/** Exit status for a guest that crashed, faulted or was killed (EX_SOFTWARE). */
const EXIT_CRASH = 70;
/** Exit status for invalid command-line usage. */
const EXIT_USAGE = 2;

async function runCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs('run', args, {
    memory: { type: 'string', expects: 'a size such as 16M' },
    cmdline: { type: 'string', expects: 'the command line for the guest' },
  });
  if (positionals.length !== 1) throw new UsageError('vmm run takes one image path or bundled guest name');
  const imagePath = resolveImage(positionals[0]);

  const vmm = new VMM();
  try {
    const image = await vmm.loadImage(imagePath);
    let vm;
    try {
      vm = vmm.createVM({ image, memory: values.memory, cmdline: values.cmdline ?? '' });
    } catch (err) {
      // A bad --memory or --cmdline value: invalid usage, not a failure.
      if (err instanceof RangeError || err instanceof TypeError) {
        throw new UsageError(`invalid --memory or --cmdline: ${err.message}`);
      }
      throw err;
    }
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

/**
 * Resolves the image argument of `vmm run`. A bare name such as "hello" is a
 * bundled guest. Anything with a slash or an .elf suffix is a path, reported
 * as unreadable by loadImage() if it is missing.
 *
 * @throws RangeError when no bundled guest has the name, with a hint when a
 *   file of that name exists in the current directory
 */
function resolveImage(target: string): string {
  if (target.includes('/') || target.endsWith('.elf')) return target;
  try {
    return bundledGuest(target);
  } catch (err) {
    if (err instanceof RangeError && fs.existsSync(target)) {
      err.message += `. To run the file ${target} in this directory, use ./${target}`;
    }
    throw err;
  }
}

function guestsCommand(args: string[]): number {
  if (args.length > 0) throw new UsageError('vmm guests takes no arguments');
  for (const guest of listGuests()) {
    process.stdout.write(`${guest.name}\t${guest.path}\t${guest.description}\n`);
  }
  return 0;
}

async function fleetCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs('fleet', args, {
    vms: { type: 'string', expects: 'a number of VMs' },
    concurrency: { type: 'string', expects: 'a number of VMs booting at once' },
    clone: { type: 'boolean' },
    json: { type: 'boolean' },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const vms = positiveInteger('vms', values.vms, 1000, {
    max: MAX_FLEET_VMS,
    instead: 'Every fleet VM stays resident, so use vmm density for more VMs',
  });
  const concurrency = values.concurrency === undefined ? undefined : positiveInteger('concurrency', values.concurrency, 1);
  const clone = values.clone ?? false;
  const progress = new Progress(process.stderr, clone ? 'cloning' : 'booting', vms);
  if (clone) process.stderr.write(`cold-booting 50 VMs for comparison, then prewarming ${vms} contexts\n`);
  const result = await runFleet({ vms, concurrency, clone, onProgress: (done) => progress.update(done) });
  const kib = (bytes: number): string => `${(bytes / 1024).toFixed(1)} KiB`;
  process.stdout.write(
    [
      `VMs booted:           ${result.vms} in ${result.elapsedMs} ms`,
      `distinct replies:     ${result.distinctReplies} (wrong: ${result.wrongReplies})`,
      `boot to first reply:  p50 ${(result.bootP50Us / 1000).toFixed(2)} ms, p99 ${(result.bootP99Us / 1000).toFixed(2)} ms`,
      `boots per second:     ${result.bootsPerSecond}`,
      `host memory per VM:   ${kib(result.hostBytesPerVm)} (MemAvailable drop), ${kib(result.rssBytesPerVm)} (process RSS growth)`,
      ...(clone
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
    if (clone) {
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
  const { values, positionals } = parseCommandArgs('density', args, {
    vms: { type: 'string', expects: 'a number of clones' },
    sample: { type: 'string', expects: 'a number of clones to call again' },
    'max-resident': { type: 'string', expects: 'a number of KVM contexts' },
    json: { type: 'boolean' },
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const vms = positiveInteger('vms', values.vms, 1_000_000);
  const sample = positiveInteger('sample', values.sample, 10_000);
  const maxResident =
    values['max-resident'] === undefined
      ? undefined
      : positiveInteger('max-resident', values['max-resident'], 1, { max: MAX_RESIDENT });
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
  const { values, positionals } = parseCommandArgs('bench', args, {
    json: { type: 'boolean' },
    svg: { type: 'string', expects: 'a file name for the SVG chart' },
  });
  if (positionals.length !== 1 || positionals[0] !== 'balloon') {
    throw new UsageError(`vmm bench takes one benchmark name, 'balloon'; received '${positionals.join(' ')}'`);
  }
  if (values.svg !== undefined) checkWritable('--svg', values.svg);
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
  if (values.svg !== undefined) {
    writeOutputFile('the SVG chart', values.svg, balloonChartSvg(result, 'Balloon: host memory over time'));
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
    if (err instanceof UsageError) {
      process.stderr.write(`vmm: ${(err as Error).message}\nRun 'vmm help' for usage.\n`);
      return EXIT_USAGE;
    }
    if (err instanceof CommandError) {
      process.stderr.write(`vmm: ${err.message}\n`);
      return 1;
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
