#!/usr/bin/env node
'use strict';

// Builds the guest runtime and every guest in csrc/guest/guests/ into
// prebuilds/guests/<name>.elf with the system C compiler (gcc, or $CC).
//
// Usage: node scripts/build-guests.js [--force] [--quiet] [name...]
//
// The npm package ships the built guests, so a C compiler is needed only to
// build from source. Other scripts can call buildGuests() directly.

const childProcess = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const ROOT = path.resolve(__dirname, '..');
const GUEST_DIR = path.join(ROOT, 'csrc', 'guest');
const INCLUDE_DIR = path.join(GUEST_DIR, 'include');
const RUNTIME_DIR = path.join(GUEST_DIR, 'runtime');
const GUESTS_DIR = path.join(GUEST_DIR, 'guests');
const LINKER_SCRIPT = path.join(RUNTIME_DIR, 'guest.ld');
const DEFAULT_OUT_DIR = path.join(ROOT, 'prebuilds', 'guests');

// Guests run in 64-bit user mode with no OS: no libc, no PIE relocation, no
// TLS for a stack protector canary, no unwinder. The baseline x86-64 ISA plus
// SSE is all the VMM promises, so AVX is off.
const COMMON_FLAGS = [
  '-std=gnu11',
  '-O2',
  '-ffreestanding',
  '-fno-pie',
  '-fno-stack-protector',
  '-fno-asynchronous-unwind-tables',
  '-fno-unwind-tables',
  '-fcf-protection=none',
  '-ffunction-sections',
  '-fdata-sections',
  '-mno-avx',
  '-Wall',
  '-Wextra',
  '-Werror',
  '-I',
  INCLUDE_DIR,
];

// The runtime uses only general registers so that it does not depend on the
// SSE state that the VMM sets up. -fno-tree-loop-distribute-patterns keeps GCC
// from compiling the copy loop in memmove into a call to memmove.
const RUNTIME_FLAGS = ['-mgeneral-regs-only', '-fno-tree-loop-distribute-patterns'];

const LINK_FLAGS = [
  '-nostdlib',
  '-static',
  '-no-pie',
  `-Wl,-T,${LINKER_SCRIPT}`,
  '-Wl,--gc-sections',
  '-Wl,--build-id=none',
  '-Wl,-z,max-page-size=4096',
  // A section that guest.ld does not place (TLS, constructors, relocations)
  // would break the guest at run time, so it fails the link instead.
  '-Wl,--orphan-handling=error',
];

function listFiles(dir, extension) {
  return fs
    .readdirSync(dir)
    .filter((name) => name.endsWith(extension))
    .sort()
    .map((name) => path.join(dir, name));
}

function mtimeMs(file) {
  try {
    return fs.statSync(file).mtimeMs;
  } catch (error) {
    if (error.code === 'ENOENT') return -Infinity;
    throw error;
  }
}

// True when `output` exists and is newer than every file in `inputs`.
function isUpToDate(output, inputs) {
  const outputTime = mtimeMs(output);
  return inputs.every((input) => mtimeMs(input) < outputTime);
}

class GuestBuildError extends Error {}

function runCompiler(compiler, args) {
  const result = childProcess.spawnSync(compiler, args, { encoding: 'utf8' });
  if (result.error) {
    if (result.error.code === 'ENOENT') {
      throw new GuestBuildError(
        `C compiler "${compiler}" not found. The npm package ships the guests prebuilt in ` +
          'prebuilds/guests; a C compiler (gcc) is needed only to build them from source. ' +
          'Install gcc or set CC to a GCC-compatible compiler.',
      );
    }
    throw new GuestBuildError(`Failed to run ${compiler}: ${result.error.message}`);
  }
  if (result.status !== 0) {
    const output = `${result.stdout}${result.stderr}`.trim();
    throw new GuestBuildError(
      `${compiler} ${args.join(' ')}\nfailed with exit status ${result.status}:\n${output}`,
    );
  }
}

// Compiles to a temporary name and renames, so that an interrupted build
// never leaves an output that looks up to date.
function compileTo(compiler, output, args) {
  const temporary = `${output}.tmp-${process.pid}`;
  try {
    runCompiler(compiler, [...args, '-o', temporary]);
    fs.renameSync(temporary, output);
  } finally {
    fs.rmSync(temporary, { force: true });
  }
}

/**
 * Builds the guests that are missing or older than one of their inputs.
 *
 * The inputs of a guest are its source, the runtime sources, the headers,
 * guest.ld and this script. The runtime objects go to a temporary directory
 * that is removed afterwards, because node-gyp owns build/ and deletes it.
 *
 * @param {object} [options]
 * @param {string[]} [options.names] guests to build, by file name without ".c"; all when empty.
 * @param {boolean} [options.force] rebuild even when outputs are newer than their inputs.
 * @param {string} [options.outDir] directory for <name>.elf, default prebuilds/guests.
 * @param {string} [options.compiler] C compiler, default $CC or "gcc".
 * @param {(line: string) => void} [options.log] receives one line per guest built.
 * @returns {{name: string, output: string, built: boolean}[]} one entry per requested guest.
 * @throws {GuestBuildError} when the compiler is missing, a guest name is unknown or a
 *   build fails; the message contains the compiler command and output.
 */
function buildGuests(options = {}) {
  const compiler = options.compiler || process.env.CC || 'gcc';
  const outDir = options.outDir || DEFAULT_OUT_DIR;
  const log = options.log || ((line) => console.log(line));
  const force = Boolean(options.force);

  const runtimeSources = listFiles(RUNTIME_DIR, '.c');
  const available = listFiles(GUESTS_DIR, '.c').map((file) => path.basename(file, '.c'));
  const names = options.names && options.names.length > 0 ? options.names : available;

  for (const name of names) {
    if (!available.includes(name)) {
      throw new GuestBuildError(
        `Unknown guest "${name}": no csrc/guest/guests/${name}.c. Known guests: ${available.join(', ')}.`,
      );
    }
  }

  // The compiler flags live in this file, so editing it rebuilds every guest.
  const sharedInputs = [__filename, LINKER_SCRIPT, ...listFiles(INCLUDE_DIR, '.h'), ...runtimeSources];
  const results = names.map((name) => ({
    name,
    source: path.join(GUESTS_DIR, `${name}.c`),
    output: path.join(outDir, `${name}.elf`),
    built: false,
  }));
  const stale = results.filter(
    (result) => force || !isUpToDate(result.output, [result.source, ...sharedInputs]),
  );

  if (stale.length > 0) {
    fs.mkdirSync(outDir, { recursive: true });
    const objDir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-vmm-guest-runtime-'));
    try {
      const runtimeObjects = runtimeSources.map((source) => {
        const object = path.join(objDir, `${path.basename(source, '.c')}.o`);
        runCompiler(compiler, [...COMMON_FLAGS, ...RUNTIME_FLAGS, '-c', source, '-o', object]);
        return object;
      });
      for (const result of stale) {
        compileTo(compiler, result.output, [
          ...COMMON_FLAGS,
          ...LINK_FLAGS,
          result.source,
          ...runtimeObjects,
          '-lgcc',
        ]);
        result.built = true;
        const size = fs.statSync(result.output).size;
        log(`built ${path.relative(process.cwd(), result.output) || result.output} (${size} bytes)`);
      }
    } finally {
      fs.rmSync(objDir, { recursive: true, force: true });
    }
  }

  return results.map(({ name, output, built }) => ({ name, output, built }));
}

function main(argv) {
  const names = [];
  let force = false;
  let quiet = false;
  for (const arg of argv) {
    if (arg === '--force') {
      force = true;
    } else if (arg === '--quiet') {
      quiet = true;
    } else if (arg === '--help' || arg === '-h') {
      console.log('Usage: node scripts/build-guests.js [--force] [--quiet] [name...]');
      console.log('  --force  rebuild even when the outputs are newer than their inputs');
      console.log('  --quiet  print nothing on success');
      console.log('  name     guest to build (csrc/guest/guests/<name>.c); default all');
      return 0;
    } else if (arg.startsWith('-')) {
      console.error(`Unknown option ${arg}. Run with --help for usage.`);
      return 2;
    } else {
      names.push(arg);
    }
  }

  try {
    const results = buildGuests({ names, force, log: quiet ? () => {} : undefined });
    if (!quiet && results.every((result) => !result.built)) {
      console.log(`guests up to date (${results.length})`);
    }
    return 0;
  } catch (error) {
    if (error instanceof GuestBuildError) {
      console.error(error.message);
      return 1;
    }
    throw error;
  }
}

module.exports = { buildGuests, GuestBuildError };

if (require.main === module) {
  process.exitCode = main(process.argv.slice(2));
}
