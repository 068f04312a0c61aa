import type { NativeErrorFields } from './binding';

/**
 * Codes of the errors the engine raises, each documented in the README.
 *
 * Argument errors are `TypeError` or `RangeError` with a Node-style code
 * (`ERR_INVALID_ARG_TYPE`, `ERR_INVALID_ARG_VALUE`, `ERR_OUT_OF_RANGE`).
 */
export type VMMErrorCode =
  | 'ERR_KVM_UNAVAILABLE'
  | 'ERR_KVM_PERMISSION'
  | 'ERR_KVM_CAPABILITY'
  | 'ERR_KVM_CREATE'
  | 'ERR_RESOURCE_LIMIT'
  | 'ERR_OUT_OF_MEMORY'
  | 'ERR_IMAGE_INVALID'
  | 'ERR_IMAGE_READ'
  | 'ERR_VM_NOT_STARTED'
  | 'ERR_VM_ALREADY_STARTED'
  | 'ERR_VM_EXITED'
  | 'ERR_VM_DESTROYED'
  | 'ERR_VMM_CLOSED'
  | 'ERR_CALL_UNANSWERED'
  | 'ERR_KVM_STATE'
  | 'ERR_SNAPSHOT_INVALID'
  | 'ERR_SNAPSHOT_READ'
  | 'ERR_SNAPSHOT_WRITE'
  | 'ERR_BALLOON_TARGET';

/**
 * The one error class of the engine. `code` names what failed; `errno` and
 * `syscall` are set when a system call failed.
 *
 * @example
 * ```ts
 * try {
 *   new VMM();
 * } catch (err) {
 *   if (err instanceof VMMError && err.code === 'ERR_KVM_PERMISSION') {
 *     console.error('add this user to the kvm group');
 *   }
 * }
 * ```
 */
export class VMMError extends Error {
  /** Documented `ERR_*` code. */
  readonly code: VMMErrorCode;
  /** Positive errno value of the failed system call, if one failed. */
  readonly errno?: number;
  /** Name of the failed system call, if one failed. */
  readonly syscall?: string;

  /**
   * @param code - documented `ERR_*` code
   * @param message - what failed, on which value, and what to do
   * @param fields - `errno` and `syscall` of a failed system call
   */
  constructor(code: VMMErrorCode, message: string, fields: { errno?: number; syscall?: string } = {}) {
    super(message);
    this.name = 'VMMError';
    this.code = code;
    if (fields.errno !== undefined) this.errno = fields.errno;
    if (fields.syscall !== undefined) this.syscall = fields.syscall;
  }

  /** Wraps an error thrown or reported by the addon. */
  static fromNative(err: unknown): Error {
    if (err instanceof VMMError) return err;
    if (err instanceof TypeError || err instanceof RangeError) return err;
    const fields = err as Partial<NativeErrorFields> | null;
    if (fields && typeof fields.code === 'string' && typeof fields.message === 'string') {
      return new VMMError(fields.code as VMMErrorCode, fields.message, {
        errno: fields.errno,
        syscall: fields.syscall,
      });
    }
    return err instanceof Error ? err : new Error(String(err));
  }
}

function describe(value: unknown): string {
  if (typeof value === 'string') return `'${value.length > 40 ? value.slice(0, 40) + '…' : value}'`;
  if (typeof value === 'bigint') return `${value}n`;
  if (value === null || typeof value !== 'object') return String(value);
  return `an instance of ${value.constructor?.name ?? 'Object'}`;
}

/** Kind of a checked value: a field of an options object, or a parameter. */
export type ValueKind = 'option' | 'argument';

/** A TypeError in the shape "The "name" option must be X. Received Y". */
export function invalidType(name: string, expected: string, value: unknown, kind: ValueKind = 'option'): TypeError {
  const err = new TypeError(`The "${name}" ${kind} must be ${expected}. Received ${describe(value)}`);
  (err as TypeError & { code: string }).code = 'ERR_INVALID_ARG_TYPE';
  return err;
}

/** A RangeError in the shape "The "name" option must be X. Received Y". */
export function outOfRange(name: string, expected: string, value: unknown, kind: ValueKind = 'option'): RangeError {
  const err = new RangeError(`The "${name}" ${kind} must be ${expected}. Received ${describe(value)}`);
  (err as RangeError & { code: string }).code = 'ERR_OUT_OF_RANGE';
  return err;
}
