import { assert } from 'chai';
import { spawn } from 'node:child_process';
import * as path from 'node:path';

import { requireKvm, sleep } from './helpers.js';

// Compiled tests run from dist/test; the library they load is dist/lib.
const LIBRARY = path.resolve(__dirname, '..', 'lib', 'index.js');

// Time a child gets to exit on its own before it counts as hung. Node starts
// in well under a second; the VMs involved boot in milliseconds.
const CHILD_LIMIT_MS = 10000;

// How long a child with a running VM must stay alive to count as kept alive.
const ALIVE_MS = 500;

/** How a child process ended and what it printed. */
interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Lines that load the library into a child script. */
const PRELUDE = `const { VMM, bundledGuest } = require(${JSON.stringify(LIBRARY)});\n`;

/**
 * Runs `script` in a new node process and resolves when it ends. A child
 * still running after CHILD_LIMIT_MS is killed and reported as timed out.
 */
function runChild(script: string, nodeArgs: string[] = []): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgs, '-e', PRELUDE + script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, CHILD_LIMIT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

describe('Node process with VMs', function () {
  before(function () {
    requireKvm(this);
  });

  it('exits via process.exit() with VMs running', async function () {
    const result = await runChild(`
      (async () => {
        const vmm = new VMM();
        const spin = vmm.createVM({ image: await vmm.loadImage(bundledGuest('test-spin')) });
        const counter = vmm.createVM({ image: await vmm.loadImage(bundledGuest('counter')) });
        await spin.start();
        await counter.start();
        await counter.call('one');
        // counter now waits for its next message and spin spins.
        console.log('running');
        process.exit(0);
      })();
    `);

    assert.isFalse(result.timedOut, 'the child did not exit');
    assert.strictEqual(result.stdout, 'running\n', `stderr: ${result.stderr}`);
    assert.strictEqual(result.signal, null);
    assert.strictEqual(result.code, 0);
    assert.strictEqual(result.stderr, '');
  });

  it('exits after close() with a VM running', async function () {
    const result = await runChild(`
      (async () => {
        const vmm = new VMM();
        const spin = vmm.createVM({ image: await vmm.loadImage(bundledGuest('test-spin')) });
        await spin.start();
        await vmm.close();
        console.log('closed');
      })();
    `);

    assert.isFalse(result.timedOut, 'the child did not exit');
    assert.strictEqual(result.stdout, 'closed\n', `stderr: ${result.stderr}`);
    assert.strictEqual(result.signal, null);
    assert.strictEqual(result.code, 0);
    assert.strictEqual(result.stderr, '');
  });

  it('exits once its VMs have ended', async function () {
    // No close(): the VMM stops holding the event loop when its last VM ends.
    const result = await runChild(`
      (async () => {
        const vmm = new VMM();
        const hello = vmm.createVM({ image: await vmm.loadImage(bundledGuest('hello')) });
        hello.on('console', (chunk) => process.stdout.write(chunk));
        await hello.start();
      })();
    `);

    assert.isFalse(result.timedOut, 'the child did not exit');
    assert.include(result.stdout, 'Hello from node-vmm guest 1\n', `stderr: ${result.stderr}`);
    assert.strictEqual(result.code, 0);
    assert.strictEqual(result.stderr, '');
  });

  it('stays alive while a VM runs', async function () {
    const child = spawn(
      process.execPath,
      [
        '-e',
        PRELUDE +
          `
          (async () => {
            const vmm = new VMM();
            const spin = vmm.createVM({ image: await vmm.loadImage(bundledGuest('test-spin')) });
            await spin.start();
            console.log('started');
          })();
        `,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const ended = new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_code, signal) => resolve(signal)));
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
          if (chunk.includes('started')) resolve();
        });
        child.on('close', () => reject(new Error('the child exited before its VM started')));
      });

      await sleep(ALIVE_MS);

      assert.strictEqual(child.exitCode, null, 'the child exited while its VM ran');
      assert.strictEqual(child.signalCode, null);
    } finally {
      child.kill('SIGKILL');
    }
    assert.strictEqual(await ended, 'SIGKILL');
  });

  it('exits cleanly after VMMs are collected', async function () {
    // Closed VMMs whose objects were collected before the process ends must
    // not leave anything behind that runs at environment teardown.
    const result = await runChild(
      `
      (async () => {
        for (let i = 0; i < 20; i++) {
          const vmm = new VMM();
          await vmm.close();
        }
        for (let i = 0; i < 3; i++) {
          global.gc();
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        console.log('collected');
      })();
    `,
      ['--expose-gc'],
    );

    assert.isFalse(result.timedOut, 'the child did not exit');
    assert.strictEqual(result.stdout, 'collected\n', `stderr: ${result.stderr}`);
    assert.strictEqual(result.signal, null, `the child died with ${result.signal}`);
    assert.strictEqual(result.code, 0);
  });
});
