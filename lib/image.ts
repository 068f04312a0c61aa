import type { NativeImage } from './binding';

const STACK_RESERVE = 256 * 1024;
const RAM_ALIGN = 2 * 1024 * 1024;
const RAM_MIN = 4 * 1024 * 1024;

/**
 * A validated guest image. Every VM created from it maps the same sealed
 * memory, so its pages exist once on the host however many VMs run it.
 * Create it with {@link VMM.loadImage}.
 */
export class Image {
  /** Path the image was loaded from. */
  readonly path: string;
  /** Guest entry point address. */
  readonly entry: number;
  /**
   * Smallest guest RAM, in bytes, that holds the image's segments and the
   * runtime's 256 KiB stack.
   */
  readonly memoryNeeded: number;
  readonly #native: NativeImage;

  /** @internal */
  constructor(path: string, nativeImage: NativeImage) {
    this.path = path;
    this.#native = nativeImage;
    this.entry = nativeImage.entry;
    const needed = Math.ceil((nativeImage.loadEnd + STACK_RESERVE) / RAM_ALIGN) * RAM_ALIGN;
    this.memoryNeeded = Math.max(RAM_MIN, needed);
  }

  /** @internal */
  get native(): NativeImage {
    return this.#native;
  }
}
