// Command-line parsing for the `vmm` command. Every mistake in the arguments
// becomes a UsageError, which the CLI prints on one line with exit status 2.
import { parseArgs } from 'node:util';

/** A mistake in the command-line arguments. */
export class UsageError extends Error {}

/** One option of a command. */
export interface OptionSpec {
  type: 'string' | 'boolean';
  /** The value a string option expects, shown when the value is missing, such as 'a size such as 16M'. */
  expects?: string;
}

/** Option values by name: a string for string options, a boolean for flags. */
export type OptionValues<Spec extends Record<string, OptionSpec>> = {
  [Name in keyof Spec]?: Spec[Name]['type'] extends 'boolean' ? boolean : string;
};

/**
 * Parses the arguments of `vmm COMMAND` against `spec`.
 *
 * A string option takes the next argument as its value even when it starts
 * with one dash, so `--vms -5` reaches the number check and reports a
 * negative number. A next argument starting with `--` counts as a missing
 * value, because it is almost always the next option.
 *
 * @throws UsageError for an unknown option, a missing value or a value given to a flag
 */
export function parseCommandArgs<Spec extends Record<string, OptionSpec>>(
  command: string,
  args: string[],
  spec: Spec,
): { values: OptionValues<Spec>; positionals: string[] } {
  const options: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const [name, option] of Object.entries(spec)) options[name] = { type: option.type };

  // With strict: false, parseArgs() accepts unknown options and missing
  // values, so the checks below can report each with the command and option.
  const { tokens } = parseArgs({ args, options, strict: false, allowPositionals: true, tokens: true });
  const values: Record<string, string | boolean> = {};
  const positionals: string[] = [];
  for (const token of tokens) {
    if (token.kind === 'positional') {
      positionals.push(token.value);
      continue;
    }
    if (token.kind !== 'option') continue;

    const option = Object.hasOwn(spec, token.name) ? spec[token.name] : undefined;
    if (option === undefined) {
      throw new UsageError(`unknown option '${token.rawName}' for vmm ${command}`);
    }
    if (option.type === 'boolean') {
      if (token.value !== undefined) {
        throw new UsageError(`option ${token.rawName} takes no value, received '${token.value}'`);
      }
      values[token.name] = true;
      continue;
    }
    const expected = option.expects ? `, expected ${option.expects}` : '';
    if (token.value === undefined) {
      throw new UsageError(`missing value for ${token.rawName}${expected}`);
    }
    if (!token.inlineValue && token.value.startsWith('--')) {
      throw new UsageError(
        `missing value for ${token.rawName}${expected}. To pass a value that starts with '--', write ${token.rawName}=VALUE`,
      );
    }
    values[token.name] = token.value;
  }
  return { values: values as OptionValues<Spec>, positionals };
}

/**
 * Parses the value of a whole-number option, or returns `fallback` when the
 * option was not given.
 *
 * @param limit - the maximum accepted value, with a note on what to do instead
 * @throws UsageError for anything but a decimal integer from 1 to `limit.max`
 */
export function positiveInteger(
  name: string,
  value: string | undefined,
  fallback: number,
  limit?: { max: number; instead?: string },
): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < 1) {
    throw new UsageError(`--${name} must be a positive integer, received '${value}'`);
  }
  const number = Number(value);
  if (limit !== undefined && number > limit.max) {
    const instead = limit.instead === undefined ? '' : `. ${limit.instead}`;
    throw new UsageError(`--${name} must be at most ${limit.max.toLocaleString('en-US')}, received '${value}'${instead}`);
  }
  return number;
}
