// Shared test helpers: the /dev/kvm gate and small utilities.
import * as fs from 'node:fs';

import { VMM, bundledGuest } from '../lib/index.js';
import type { Image, VM } from '../lib/index.js';

/** Why KVM tests cannot run here, or undefined when they can. */
export function kvmMissingReason(): string | undefined {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT'
      ? '/dev/kvm does not exist (no KVM module loaded)'
      : `/dev/kvm is not readable and writable by this user (${code})`;
  }
}

/** Skips the suite with a stated reason where /dev/kvm is unusable. */
export function requireKvm(context: Mocha.Context): void {
  const reason = kvmMissingReason();
  if (reason !== undefined) {
    // Mocha prints skipped suites as pending; the reason goes with them.
    console.log(`      skipped: ${reason}`);
    context.skip();
  }
}

/** Loads a bundled guest image. */
export function loadGuest(vmm: VMM, name: string): Promise<Image> {
  return vmm.loadImage(bundledGuest(name));
}

/** Collects everything a VM prints on its console. */
export function captureConsole(vm: VM): { text: () => string } {
  let text = '';
  vm.on('console', (chunk) => {
    text += chunk;
  });
  return { text: () => text };
}

/** Number of open file descriptors of this process. */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** Resident set size of this process in bytes, from /proc/self/statm. */
export function rssBytes(): number {
  const pages = Number(fs.readFileSync('/proc/self/statm', 'utf8').split(' ')[1]);
  return pages * 4096;
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Decodes reply bytes as UTF-8 text. */
export function text(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}
