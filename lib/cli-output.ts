// Output files of the `vmm` command, checked before a run starts so that a
// bad path fails at once instead of after the work is done.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { getSystemErrorMap } from 'node:util';

import { UsageError } from './cli-args';

/** A failure the CLI reports on one line with exit status 1. */
export class CommandError extends Error {}

/** Returns "ENOENT: no such file or directory" for a failed system call. */
function errnoText(err: NodeJS.ErrnoException): string {
  const entry = err.errno === undefined ? undefined : getSystemErrorMap().get(err.errno);
  if (entry !== undefined) return `${entry[0]}: ${entry[1]}`;
  return err.code ?? err.message;
}

/**
 * Checks that `file`, the value of `option`, can be written: an existing file
 * must be writable, and otherwise its directory must exist and be writable.
 *
 * @throws UsageError naming the option, the path and what is wrong
 */
export function checkWritable(option: string, file: string): void {
  const directory = path.dirname(path.resolve(file));
  let target = file;
  if (fs.existsSync(file)) {
    if (fs.statSync(file).isDirectory()) {
      throw new UsageError(`invalid ${option} '${file}': it is a directory, expected a file name`);
    }
  } else {
    target = directory;
    if (!fs.existsSync(directory)) {
      throw new UsageError(`invalid ${option} '${file}': the directory '${directory}' does not exist`);
    }
    if (!fs.statSync(directory).isDirectory()) {
      throw new UsageError(`invalid ${option} '${file}': '${directory}' is not a directory`);
    }
  }
  try {
    fs.accessSync(target, fs.constants.W_OK);
  } catch (err) {
    throw new UsageError(`invalid ${option} '${file}': '${target}' is not writable (${errnoText(err as NodeJS.ErrnoException)})`);
  }
}

/**
 * Writes `data` to `file`.
 *
 * @param contents - what the file contains, for the error message, such as 'the SVG chart'
 * @throws CommandError naming the file and the errno when the write fails
 */
export function writeOutputFile(contents: string, file: string, data: string): void {
  try {
    fs.writeFileSync(file, data);
  } catch (err) {
    const errno = err as NodeJS.ErrnoException;
    if (errno.syscall === undefined) throw err;
    throw new CommandError(`failed to write ${contents} to '${file}': ${errnoText(errno)}`);
  }
}
