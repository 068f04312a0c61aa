import { assert } from 'chai';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { requireKvm } from './helpers.js';

// Compiled tests run from dist/test; the CLI they run is dist/lib/cli.js.
const CLI = path.resolve(__dirname, '..', 'lib', 'cli.js');

// Time the CLI gets to exit before it counts as hung. The balloon benchmark,
// the longest command run here, takes about a second.
const CHILD_LIMIT_MS = 30000;

/** Exit status of the CLI for invalid command-line usage. */
const EXIT_USAGE = 2;

/** How a CLI run ended and what it printed. */
interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `vmm ARGS` in a new node process and resolves when it ends. */
function runCli(args: string[], cwd?: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_LIMIT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Checks the two-line usage error: the message, then the hint. */
function assertUsageError(result: CliResult, fragment: string): void {
  const lines = result.stderr.split('\n');
  assert.strictEqual(result.code, EXIT_USAGE, `stderr: ${result.stderr}`);
  assert.lengthOf(lines, 3, `stderr: ${result.stderr}`);
  assert.match(lines[0], /^vmm: /);
  assert.include(lines[0], fragment);
  assert.strictEqual(lines[1], "Run 'vmm help' for usage.");
  assert.strictEqual(lines[2], '');
  assert.notInclude(result.stderr, 'ERR_PARSE_ARGS');
  assert.strictEqual(result.stdout, '');
}

describe('vmm CLI', function () {
  // A fresh directory for each test, for output files and as a working directory.
  let dir: string;

  beforeEach(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-cli-'));
  });

  afterEach(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('argument errors', function () {
    // Each of these fails before a VM is created, so none needs /dev/kvm.
    const cases: Array<{ args: string[]; fragment: string }> = [
      { args: ['run', 'hello', '--bogus'], fragment: "unknown option '--bogus' for vmm run" },
      { args: ['run', 'hello', '--memory'], fragment: 'missing value for --memory, expected a size such as 16M' },
      { args: ['run', 'hello', '--memory', '--cmdline', 'x'], fragment: 'missing value for --memory' },
      { args: ['fleet', '--vms'], fragment: 'missing value for --vms' },
      { args: ['fleet', '--vms', '-5'], fragment: "--vms must be a positive integer, received '-5'" },
      { args: ['fleet', '--vms=-5'], fragment: "--vms must be a positive integer, received '-5'" },
      { args: ['fleet', '--vms', '0'], fragment: "--vms must be a positive integer, received '0'" },
      { args: ['fleet', '--vms', '1.5'], fragment: "--vms must be a positive integer, received '1.5'" },
      { args: ['fleet', '--vms', '20001'], fragment: "--vms must be at most 20,000, received '20001'" },
      { args: ['fleet', '--vms', '100000'], fragment: 'use vmm density for more VMs' },
      { args: ['fleet', '--concurrency', '-1'], fragment: "--concurrency must be a positive integer, received '-1'" },
      { args: ['fleet', '--json=1'], fragment: "option --json takes no value, received '1'" },
      { args: ['fleet', 'extra'], fragment: "unexpected argument 'extra'" },
      { args: ['density', '--sample', '-3'], fragment: "--sample must be a positive integer, received '-3'" },
      { args: ['density', '--max-resident', '100001'], fragment: "--max-resident must be at most 100,000, received '100001'" },
      { args: ['bench', 'balloon', '--svg'], fragment: 'missing value for --svg' },
      { args: ['bench', 'other'], fragment: "received 'other'" },
      { args: ['frobnicate'], fragment: "unknown command 'frobnicate'" },
    ];
    for (const { args, fragment } of cases) {
      it(`rejects vmm ${args.join(' ')}`, async function () {
        assertUsageError(await runCli(args), fragment);
      });
    }
  });

  describe('run with guest options', function () {
    const cases: Array<{ args: string[]; fragment: string }> = [
      { args: ['run', 'hello', '--memory', '3M'], fragment: 'invalid --memory or --cmdline: The "memory" option' },
      { args: ['run', 'hello', '--memory', '-5'], fragment: 'invalid --memory or --cmdline: The "memory" option' },
    ];
    for (const { args, fragment } of cases) {
      it(`rejects vmm ${args.join(' ')}`, async function () {
        requireKvm(this);
        assertUsageError(await runCli(args), fragment);
      });
    }
  });

  describe('bench balloon --svg', function () {
    it('rejects a missing directory before running', async function () {
      const file = path.join(dir, 'missing', 'chart.svg');

      const result = await runCli(['bench', 'balloon', '--svg', file]);

      assertUsageError(result, `invalid --svg '${file}': the directory '${path.dirname(file)}' does not exist`);
      assert.notInclude(result.stderr, 'touching', 'the benchmark ran');
    });

    it('rejects a directory as the file', async function () {
      const result = await runCli(['bench', 'balloon', '--svg', dir]);

      assertUsageError(result, `invalid --svg '${dir}': it is a directory`);
    });

    it('reports a failed write on one line', async function () {
      requireKvm(this);
      // /dev/full passes the writable check, and every write to it fails.
      const result = await runCli(['bench', 'balloon', '--svg', '/dev/full']);

      const lines = result.stderr.trimEnd().split('\n');
      assert.strictEqual(result.code, 1, `stderr: ${result.stderr}`);
      assert.strictEqual(lines[lines.length - 1], "vmm: failed to write the SVG chart to '/dev/full': ENOSPC: no space left on device");
      assert.notInclude(result.stderr, 'internal error');
      assert.notMatch(result.stderr, /^\s+at /m, 'stderr has a stack trace');
    });

    it('writes the chart', async function () {
      requireKvm(this);
      const file = path.join(dir, 'chart.svg');

      const result = await runCli(['bench', 'balloon', '--svg', file]);

      assert.strictEqual(result.code, 0, `stderr: ${result.stderr}`);
      assert.match(fs.readFileSync(file, 'utf8'), /^<svg/);
    });
  });

  describe('run with a bare name', function () {
    it('points to ./NAME when a file NAME exists', async function () {
      fs.writeFileSync(path.join(dir, 'rawguest'), '');

      const result = await runCli(['run', 'rawguest'], dir);

      assert.strictEqual(result.code, 1, `stderr: ${result.stderr}`);
      assert.include(result.stderr, "no bundled guest named 'rawguest'");
      assert.include(result.stderr, 'To run the file rawguest in this directory, use ./rawguest');
    });

    it('gives no file hint when no file exists', async function () {
      const result = await runCli(['run', 'rawguest'], dir);

      assert.strictEqual(result.code, 1, `stderr: ${result.stderr}`);
      assert.include(result.stderr, "no bundled guest named 'rawguest'");
      assert.notInclude(result.stderr, './rawguest');
    });

    it('lists no test guests as available', async function () {
      const result = await runCli(['run', 'rawguest'], dir);

      assert.include(result.stderr, 'available: counter, echo, hello');
      assert.notInclude(result.stderr, 'test-');
    });
  });

  describe('guests', function () {
    it('lists the user guests with descriptions', async function () {
      const result = await runCli(['guests']);

      const rows = result.stdout.trimEnd().split('\n').map((line) => line.split('\t'));
      assert.strictEqual(result.code, 0, `stderr: ${result.stderr}`);
      assert.deepEqual(
        rows.map((row) => row[0]),
        ['counter', 'echo', 'hello'],
      );
      for (const row of rows) {
        assert.lengthOf(row, 3, `row: ${row.join('\\t')}`);
        assert.isTrue(path.isAbsolute(row[1]), `not an absolute path: ${row[1]}`);
        assert.isNotEmpty(row[2], `no description for ${row[0]}`);
      }
    });
  });

  describe('help', function () {
    it('documents every option and exit status', async function () {
      const result = await runCli(['help']);

      assert.strictEqual(result.code, 0);
      for (const text of [
        '--memory SIZE',
        '--cmdline STR',
        '--vms N         VMs to boot (default 1,000, at most 20,000)',
        '--concurrency N',
        '--clone',
        '--vms N         clones to create (default 1,000,000)',
        '--sample N',
        '--max-resident N',
        '--svg FILE',
        'Ctrl-C',
        'Exit status:',
        '70   vmm run: the guest crashed, faulted or was killed',
        '2    invalid command-line usage',
      ]) {
        assert.include(result.stdout, text);
      }
    });
  });
});
