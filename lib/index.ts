export { VMM } from './vmm';
export { VM } from './vm';
export type { VMExit, VMState, VMStats, VMEvents } from './vm';
export { Image } from './image';
export { VMMError } from './errors';
export type { VMMErrorCode } from './errors';
export type { VMMOptions, CreateVMOptions } from './options';
export { parseSize } from './options';
export { bundledGuest, listGuests, guestDir } from './guests';
