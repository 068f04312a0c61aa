/*
 * Guest entry point and the ELF note that marks the image as a node-vmm guest.
 */
#include "vmm_guest.h"

int main(void);

_Noreturn void vmm_start(void);

/*
 * The VMM enters _start in user mode with rsp at the top of RAM, 16-byte
 * aligned, and every other general register zero. The call pushes the return
 * address, so vmm_start starts with rsp + 8 aligned to 16 as the SysV ABI
 * requires.
 * The loader zero-fills .bss, so nothing needs clearing here. The ud2 after
 * the call is never reached, because vmm_start does not return.
 */
__asm__(".pushsection .text.entry, \"ax\", @progbits\n"
        ".globl _start\n"
        ".type _start, @function\n"
        "_start:\n"
        "    call vmm_start\n"
        "    ud2\n"
        ".size _start, . - _start\n"
        ".popsection\n");

_Noreturn void vmm_start(void)
{
    vmm_exit(main());
}

/* Standard ELF note layout: namesz, descsz and type, then the name and the
 * descriptor, each padded to 4 bytes. guest.ld keeps the section and places it
 * in the PT_NOTE segment. */
struct vmm_abi_note {
    uint32_t namesz;
    uint32_t descsz;
    uint32_t type;
    char name[(sizeof(VMM_NOTE_OWNER) + 3) & ~3u];
    uint32_t desc;
};

__attribute__((section(".note.nodevmm"), used, aligned(4)))
static const struct vmm_abi_note abi_note = {
    .namesz = sizeof(VMM_NOTE_OWNER),
    .descsz = sizeof(uint32_t),
    .type = VMM_NOTE_ABI,
    .name = VMM_NOTE_OWNER,
    .desc = VMM_ABI_VERSION,
};
