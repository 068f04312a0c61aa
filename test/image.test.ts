import { assert } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { VMM, VMMError } from '../lib/index.js';
import {
    buildGuestElf,
    guestElfLayout,
    type GuestElfOptions,
    type GuestElfLayout,
    LOAD_ADDRESS,
    LOAD_MEMSZ,
    NOTE_HEADER_SIZE,
    PF_R,
    PF_W,
    PF_X,
    type ProgramHeader,
    PT_DYNAMIC,
    PT_INTERP,
    PT_LOAD,
    PT_NULL,
    setHeaderField,
    setNoteField,
    setProgramHeaderField,
} from './fixtures/elf-builder.js';
import { requireKvm } from './helpers.js';

const U64_MAX = 0xffffffffffffffffn;

interface ImageCase {
    name: string;
    image: () => Buffer;
    expected: RegExp;
}

/** Builds a valid image with `options`, then applies `mutate` to it. */
function variant(
    mutate: (image: Buffer, layout: GuestElfLayout) => void,
    options: GuestElfOptions = {},
): Buffer {
    const image = buildGuestElf(options);
    mutate(image, guestElfLayout(options));
    return image;
}

function withProgramHeaders(...extraProgramHeaders: ProgramHeader[]): Buffer {
    return buildGuestElf({ extraProgramHeaders });
}

/** Returns a read-write PT_LOAD at `vaddr` that copies the first 0x10 bytes of the file. */
function dataSegment(vaddr: bigint, memsz: bigint): ProgramHeader {
    return {
        type: PT_LOAD,
        flags: PF_R | PF_W,
        offset: 0n,
        vaddr,
        filesz: 0x10n,
        memsz,
        align: 0x1000n,
    };
}

/** Returns a seeded 32-bit generator (mulberry32), so that a failing variant can be rebuilt. */
function randomGenerator(seed: number): () => number {
    let state = seed >>> 0;
    return () => {
        state = (state + 0x6d2b79f5) >>> 0;
        let t = state;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return (t ^ (t >>> 14)) >>> 0;
    };
}

function corruptedImage(seed: number): Buffer {
    const next = randomGenerator(seed);
    let image = buildGuestElf({ buildIdNote: seed % 2 === 0 });
    const flips = 1 + (next() % 8);
    for (let i = 0; i < flips; i++) {
        const position = next() % image.length;
        image[position] = (image[position] ?? 0) ^ (1 + (next() % 255));
    }
    if (next() % 4 === 0) {
        image = image.subarray(0, next() % image.length);
    }
    return image;
}

const headerCases: ImageCase[] = [
    {
        name: 'rejects a file shorter than 64 bytes',
        image: () => buildGuestElf().subarray(0, 63),
        expected: /file size 63 is smaller than the 64-byte ELF header/,
    },
    {
        name: 'rejects bad magic',
        image: () => variant((image) => image.write('X', 1, 'latin1')),
        expected: /bad ELF magic 7f 58 4c 46/,
    },
    {
        name: 'rejects ELFCLASS32',
        image: () => variant((image) => setHeaderField(image, 'EI_CLASS', 1)),
        expected: /EI_CLASS 1 is not ELFCLASS64/,
    },
    {
        name: 'rejects big-endian data',
        image: () => variant((image) => setHeaderField(image, 'EI_DATA', 2)),
        expected: /EI_DATA 2 is not ELFDATA2LSB/,
    },
    {
        name: 'rejects EI_VERSION other than 1',
        image: () => variant((image) => setHeaderField(image, 'EI_VERSION', 0)),
        expected: /EI_VERSION 0 is not EV_CURRENT/,
    },
    {
        name: 'rejects ET_DYN',
        image: () => variant((image) => setHeaderField(image, 'e_type', 3)),
        expected: /e_type 3 is not ET_EXEC/,
    },
    {
        name: 'rejects e_machine EM_386',
        image: () => variant((image) => setHeaderField(image, 'e_machine', 3)),
        expected: /e_machine 3 is not EM_X86_64/,
    },
    {
        name: 'rejects e_version other than 1',
        image: () => variant((image) => setHeaderField(image, 'e_version', 0)),
        expected: /e_version 0 is not EV_CURRENT/,
    },
    {
        name: 'rejects e_ehsize other than 64',
        image: () => variant((image) => setHeaderField(image, 'e_ehsize', 52)),
        expected: /e_ehsize 52 is not 64/,
    },
    {
        name: 'rejects e_phentsize other than 56',
        image: () => variant((image) => setHeaderField(image, 'e_phentsize', 32)),
        expected: /e_phentsize 32 is not 56/,
    },
    {
        name: 'rejects e_phnum 0',
        image: () => variant((image) => setHeaderField(image, 'e_phnum', 0)),
        expected: /e_phnum is 0/,
    },
    {
        name: 'rejects e_phnum above 64',
        image: () => variant((image) => setHeaderField(image, 'e_phnum', 65)),
        expected: /e_phnum 65 is larger than the maximum 64/,
    },
    {
        name: 'rejects program headers past the end',
        image: () => variant((image) => setHeaderField(image, 'e_phoff', image.length - 8)),
        expected: /program header table \(e_phoff 0x[0-9a-f]+, 2 entries of 56 bytes\) lies/,
    },
    {
        name: 'rejects overflowing e_phoff',
        image: () => variant((image) => setHeaderField(image, 'e_phoff', U64_MAX - 7n)),
        expected: /program header table \(e_phoff 0xfffffffffffffff8,/,
    },
];

const loadCases: ImageCase[] = [
    {
        name: 'rejects p_filesz above p_memsz',
        image: () =>
            variant((image) => setProgramHeaderField(image, 0, 'p_filesz', LOAD_MEMSZ + 1n)),
        expected: /PT_LOAD 0: p_filesz 0x1001 is larger than p_memsz 0x1000/,
    },
    {
        name: 'rejects p_offset + p_filesz past the end',
        image: () => variant((image) => setProgramHeaderField(image, 0, 'p_offset', 0x100)),
        expected: /PT_LOAD 0: p_offset 0x100 \+ p_filesz 0x[0-9a-f]+ lies outside/,
    },
    {
        name: 'rejects overflowing p_offset + p_filesz',
        image: () => variant((image) => setProgramHeaderField(image, 0, 'p_offset', U64_MAX)),
        expected: /PT_LOAD 0: p_offset 0xffffffffffffffff \+ p_filesz/,
    },
    {
        name: 'rejects overflowing p_vaddr + p_memsz',
        image: () =>
            variant((image) => setProgramHeaderField(image, 0, 'p_vaddr', U64_MAX - 0xffn)),
        expected: /PT_LOAD 0: p_vaddr 0xffffffffffffff00 \+ p_memsz 0x1000 overflows/,
    },
    {
        name: 'rejects p_vaddr in the reserved area',
        image: () => variant((image) => setProgramHeaderField(image, 0, 'p_vaddr', 0xff000)),
        expected: /PT_LOAD 0: p_vaddr 0xff000 is below 0x100000/,
    },
    {
        name: 'rejects segment end above 3 GiB',
        image: () =>
            variant((image) => {
                setProgramHeaderField(image, 0, 'p_vaddr', 0xbffff000);
                setProgramHeaderField(image, 0, 'p_memsz', 0x2000);
            }),
        expected: /PT_LOAD 0: segment end 0xc0001000 .* is above 0xc0000000/,
    },
    {
        name: 'rejects p_align 3',
        image: () => variant((image) => setProgramHeaderField(image, 0, 'p_align', 3)),
        expected: /PT_LOAD 0: p_align 0x3 is not 0, 1 or a power of two/,
    },
    {
        name: 'rejects overlapping PT_LOADs',
        image: () => withProgramHeaders(dataSegment(LOAD_ADDRESS + 0x800n, 0x1000n)),
        expected: /PT_LOAD 2 \(0x100800-0x101800\) shares a 4 KiB page with PT_LOAD 0/,
    },
    {
        // The two data segments have disjoint bytes but share the page at 0x101000.
        name: 'rejects PT_LOADs sharing a page',
        image: () =>
            withProgramHeaders(
                dataSegment(LOAD_ADDRESS + 0x1000n, 0x10n),
                dataSegment(LOAD_ADDRESS + 0x1800n, 0x10n),
            ),
        expected: /PT_LOAD 3 \(0x101800-0x101810\) shares a 4 KiB page with PT_LOAD 2/,
    },
    {
        name: 'rejects a writable code segment',
        image: () =>
            variant((image) => setProgramHeaderField(image, 0, 'p_flags', PF_R | PF_W | PF_X)),
        expected: /PT_LOAD 0: p_flags 0x7 sets both PF_W and PF_X/,
    },
    {
        name: 'rejects PF_W and PF_X without PF_R',
        image: () => withProgramHeaders({ ...dataSegment(LOAD_ADDRESS + 0x1000n, 0x10n), flags: PF_W | PF_X }),
        expected: /PT_LOAD 2: p_flags 0x3 sets both PF_W and PF_X/,
    },
    {
        name: 'rejects an image without PT_LOAD',
        image: () => variant((image) => setProgramHeaderField(image, 0, 'p_type', PT_NULL)),
        expected: /no PT_LOAD program header/,
    },
    {
        name: 'rejects e_entry outside every PT_LOAD',
        image: () => variant((image) => setHeaderField(image, 'e_entry', 0x200000)),
        expected: /e_entry 0x200000 is not inside any PT_LOAD segment/,
    },
    {
        name: 'rejects e_entry without PF_X',
        image: () => variant((image) => setProgramHeaderField(image, 0, 'p_flags', PF_R)),
        expected: /e_entry 0x[0-9a-f]+ lies in PT_LOAD 0, which lacks PF_X/,
    },
    {
        name: 'rejects PT_INTERP',
        image: () =>
            withProgramHeaders({
                type: PT_INTERP,
                flags: PF_R,
                offset: 0n,
                vaddr: 0n,
                filesz: 0n,
                memsz: 0n,
                align: 1n,
            }),
        expected: /program header 2 is PT_INTERP/,
    },
    {
        name: 'rejects PT_DYNAMIC',
        image: () =>
            withProgramHeaders({
                type: PT_DYNAMIC,
                flags: PF_R | PF_W,
                offset: 0n,
                vaddr: 0n,
                filesz: 0n,
                memsz: 0n,
                align: 8n,
            }),
        expected: /program header 2 is PT_DYNAMIC/,
    },
];

const noteCases: ImageCase[] = [
    {
        name: 'rejects a missing PT_NOTE',
        image: () => variant((image) => setProgramHeaderField(image, 1, 'p_type', PT_NULL)),
        expected: /ABI note \(PT_NOTE with owner "NODEVMM", type 1\) is missing/,
    },
    {
        name: 'rejects another note owner',
        image: () =>
            variant((image, layout) => image.write('X', layout.abiNoteOffset + NOTE_HEADER_SIZE)),
        expected: /ABI note .* is missing/,
    },
    {
        name: 'rejects another note type',
        image: () =>
            variant((image, layout) => setNoteField(image, layout.abiNoteOffset, 'n_type', 2)),
        expected: /ABI note .* is missing/,
    },
    {
        name: 'rejects n_namesz past the segment',
        image: () =>
            variant((image, layout) =>
                setNoteField(image, layout.abiNoteOffset, 'n_namesz', 0xffffffff),
            ),
        expected: /PT_NOTE 1: n_namesz 0xffffffff .* runs past the segment end/,
    },
    {
        name: 'rejects n_descsz past the segment',
        image: () =>
            variant((image, layout) =>
                setNoteField(image, layout.abiNoteOffset, 'n_descsz', 0xfffffffc),
            ),
        expected: /PT_NOTE 1: n_descsz 0xfffffffc .* runs past the segment end/,
    },
    {
        name: 'rejects a cut note header',
        image: () => variant((image) => setProgramHeaderField(image, 1, 'p_filesz', 8)),
        expected: /PT_NOTE 1: note header at segment offset 0x0 needs 12 bytes/,
    },
    {
        name: 'rejects PT_NOTE past the end',
        image: () => variant((image) => setProgramHeaderField(image, 1, 'p_filesz', 0x1000)),
        expected: /PT_NOTE 1: p_offset 0x[0-9a-f]+ \+ p_filesz 0x1000 lies outside/,
    },
    {
        name: 'rejects ABI note n_descsz 0',
        image: () =>
            variant((image, layout) => setNoteField(image, layout.abiNoteOffset, 'n_descsz', 0)),
        expected: /PT_NOTE 1: ABI note n_descsz 0 is not 4/,
    },
    {
        name: 'rejects ABI version 2',
        image: () => buildGuestElf({ abiVersion: 2 }),
        expected: /ABI note version 2 is not supported, .* supports only version 1/,
    },
];

describe('VMM#loadImage()', function () {
    let vmm: VMM | undefined;
    let directory = '';
    let fileCount = 0;

    before(function () {
        requireKvm(this);
        vmm = new VMM();
        directory = fs.mkdtempSync(path.join(os.tmpdir(), 'node-vmm-image-'));
    });

    after(async function () {
        if (vmm !== undefined) {
            await vmm.close();
        }
        if (directory !== '') {
            fs.rmSync(directory, { recursive: true, force: true });
        }
    });

    function writeImage(image: Buffer): string {
        fileCount += 1;
        const file = path.join(directory, `image-${fileCount}.elf`);
        fs.writeFileSync(file, image);
        return file;
    }

    async function load(image: Buffer): Promise<unknown> {
        if (vmm === undefined) {
            throw new Error('VMM was not created');
        }
        return vmm.loadImage(writeImage(image));
    }

    /** Returns the rejection of loadImage, or undefined when the image loads. */
    async function loadError(image: Buffer): Promise<unknown> {
        try {
            await load(image);
        } catch (error) {
            return error;
        }
        return undefined;
    }

    async function assertInvalid(image: Buffer, expected: RegExp): Promise<void> {
        const error = await loadError(image);
        assert.instanceOf(error, VMMError);
        assert.strictEqual((error as VMMError).code, 'ERR_IMAGE_INVALID');
        assert.match((error as VMMError).message, expected);
    }

    describe('valid images', function () {
        it('loads the builder image', async function () {
            assert.exists(await load(buildGuestElf()));
        });

        it('skips a GNU build-id note', async function () {
            assert.exists(await load(buildGuestElf({ buildIdNote: true })));
        });

        it('ignores a PT_LOAD with p_memsz 0', async function () {
            const empty: ProgramHeader = {
                type: PT_LOAD,
                flags: PF_R,
                offset: U64_MAX,
                vaddr: 0n,
                filesz: 0n,
                memsz: 0n,
                align: 3n,
            };
            assert.exists(await load(withProgramHeaders(empty)));
        });

        it('accepts p_align 0', async function () {
            const image = variant((data) => setProgramHeaderField(data, 0, 'p_align', 0));
            assert.exists(await load(image));
        });

        it('accepts p_offset not congruent to p_vaddr', async function () {
            const segment = { ...dataSegment(LOAD_ADDRESS + 0x1000n, 0x10n), offset: 1n };
            assert.exists(await load(withProgramHeaders(segment)));
        });
    });

    describe('ELF header', function () {
        for (const testCase of headerCases) {
            it(testCase.name, async function () {
                await assertInvalid(testCase.image(), testCase.expected);
            });
        }
    });

    describe('PT_LOAD', function () {
        for (const testCase of loadCases) {
            it(testCase.name, async function () {
                await assertInvalid(testCase.image(), testCase.expected);
            });
        }
    });

    describe('ABI note', function () {
        for (const testCase of noteCases) {
            it(testCase.name, async function () {
                await assertInvalid(testCase.image(), testCase.expected);
            });
        }
    });

    describe('truncated file', function () {
        // PT_LOAD 0 covers the whole file, so every cut breaks at least one check.
        const layout = guestElfLayout();
        const cuts = [0, 1, 16, 63, 64, 100, layout.notesOffset + 4, layout.codeOffset];
        cuts.push(layout.fileSize - 1);
        for (const cut of cuts) {
            it(`rejects a file cut to ${cut} bytes`, async function () {
                const error = await loadError(buildGuestElf().subarray(0, cut));
                assert.instanceOf(error, VMMError);
                assert.strictEqual((error as VMMError).code, 'ERR_IMAGE_INVALID');
            });
        }
    });

    describe('random corruption', function () {
        it('loads or rejects 300 variants', async function () {
            this.timeout(60_000);
            for (let seed = 1; seed <= 300; seed++) {
                const error = await loadError(corruptedImage(seed));
                if (error === undefined) {
                    continue;
                }
                const code = error instanceof VMMError ? error.code : String(error);
                assert.strictEqual(code, 'ERR_IMAGE_INVALID', `seed ${seed}`);
            }
            assert.exists(await load(buildGuestElf()), 'valid image after the variants');
        });
    });
});
