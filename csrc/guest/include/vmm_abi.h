/*
 * Guest ABI of the node-vmm engine, version 1.
 *
 * Shared by the host (C++) and by guests (freestanding C). It fixes the guest
 * memory map, the boot information block, the hypercall block and the
 * hypercall numbers. docs/guest-abi.md describes the same contract in prose.
 */
#ifndef VMM_ABI_H
#define VMM_ABI_H

#ifdef __cplusplus
#include <cstdint>
#else
#include <stdint.h>
#endif

#define VMM_ABI_VERSION 1u

/* ELF note that marks an image as a guest of this ABI: owner "NODEVMM",
 * type VMM_NOTE_ABI, descriptor one uint32_t holding VMM_ABI_VERSION. */
#define VMM_NOTE_OWNER "NODEVMM"
#define VMM_NOTE_ABI 1u

#define VMM_PAGE_SIZE 4096ull

/* Guest memory map. Guest virtual addresses equal guest physical addresses.
 * Addresses below VMM_RESERVED_END belong to the VMM: page 0 is unmapped,
 * the supervisor area (page tables, GDT, IDT, TSS, exception stubs) is not
 * accessible from user mode, and the boot information page is read-only.
 * ELF segments must load at or above VMM_RESERVED_END. The VMM maps a
 * segment's pages with its permissions, executable only with PF_X and
 * writable only with PF_W, and the rest of RAM writable but not executable.
 * It rejects a segment with both PF_W and PF_X. */
#define VMM_RESERVED_END 0x100000ull
#define VMM_BOOT_INFO_ADDR 0x10000ull

/* A store of 8 bytes to this address is a hypercall. No RAM backs it. */
#define VMM_DOORBELL_ADDR 0xFFFFF000ull

/* Guest RAM size limits. The size is a multiple of 2 MiB. */
#define VMM_RAM_MIN (4ull << 20)
#define VMM_RAM_MAX (3ull << 30)
#define VMM_RAM_ALIGN (2ull << 20)

#define VMM_CMDLINE_MAX 2048u /* bytes, including the terminating NUL */
#define VMM_MSG_MAX 65536u    /* max bytes of one message or reply */
#define VMM_RANDOM_MAX 256u   /* max bytes of one VMM_HC_RANDOM call */

#define VMM_BOOT_MAGIC 0x424d4d56u /* "VMMB" in little-endian order */

#ifndef __ASSEMBLER__

/* Boot information block at VMM_BOOT_INFO_ADDR, written by the VMM before the
 * guest starts. A clone of a snapshot gets a new vm_id and random_seed, so a
 * guest reads these fields when it needs them instead of caching them. */
struct vmm_boot_info {
    uint32_t magic;       /* VMM_BOOT_MAGIC */
    uint32_t abi_version; /* VMM_ABI_VERSION */
    uint64_t ram_size;    /* bytes of guest RAM, starting at address 0 */
    uint64_t vm_id;       /* host-assigned id, unique within one VMM */
    uint64_t random_seed; /* 64 random bits, new for every VM and clone */
    uint32_t cmdline_len; /* bytes in cmdline, without the NUL */
    uint32_t reserved;
    char cmdline[VMM_CMDLINE_MAX]; /* NUL-terminated */
};

/* Entry state: 64-bit user mode (CPL3), rip = ELF entry point,
 * rsp = ram_size (top of RAM), rdi = VMM_BOOT_INFO_ADDR, rflags = 0x2,
 * other general registers zero. SSE is enabled. No interrupts are delivered. */

/* Hypercall block: 8-byte aligned, inside guest RAM at or above
 * VMM_RESERVED_END. The guest fills nr and args, stores the block's address
 * to VMM_DOORBELL_ADDR, and reads ret when the store completes. */
struct vmm_hypercall {
    uint64_t nr;
    uint64_t args[6];
    int64_t ret; /* >= 0 on success, a negative VMM_E* value on failure */
};

enum vmm_hypercall_nr {
    /* args: buf, len. ret: len. Bytes past the host's console buffer are
     * dropped and counted by the host; the call never blocks. */
    VMM_HC_CONSOLE_WRITE = 1,
    /* args: code (low 8 bits are the exit code). Does not return. */
    VMM_HC_EXIT = 2,
    /* args: buf, cap, deadline (CLOCK_MONOTONIC ns, absolute; 0 = none).
     * Blocks until a message arrives or the deadline passes.
     * ret: message length, -VMM_ETIMEDOUT, -VMM_EFAULT for a bad buffer,
     * -VMM_EINTR when the balloon target changed and no message is queued,
     * or -VMM_EMSGSIZE when the next message is longer than cap (the
     * message stays queued). */
    VMM_HC_WAIT = 3,
    /* args: buf, len. Replies to the last message that VMM_HC_WAIT returned.
     * ret: 0, -VMM_EINVAL when no message awaits a reply,
     * -VMM_EMSGSIZE when len > VMM_MSG_MAX. */
    VMM_HC_REPLY = 4,
    /* args: clock (VMM_CLOCK_*). ret: nanoseconds. */
    VMM_HC_CLOCK = 5,
    /* args: buf, len (<= VMM_RANDOM_MAX). ret: len. */
    VMM_HC_RANDOM = 6,
    /* args: reply_buf, reply_len, buf, cap, deadline. Replies to the message
     * that awaits a reply, if any, then waits as VMM_HC_WAIT does. One exit
     * instead of two per served call. ret: as VMM_HC_WAIT, or the error of
     * the reply part (-VMM_EFAULT, -VMM_EMSGSIZE), in which case it does
     * not wait. */
    VMM_HC_REPLY_WAIT = 7,
    /* args: none. ret: the balloon target in pages: how many pages the host
     * asks the guest to hand back. VMM_HC_WAIT and VMM_HC_REPLY_WAIT return
     * -VMM_EINTR when the target changes while no message is queued. */
    VMM_HC_BALLOON_TARGET = 8,
    /* args: frames (uint64_t page frame numbers), count (<= VMM_BALLOON_BATCH).
     * Hands the pages to the host, which drops their contents; a frame
     * outside guest RAM or in the reserved area is ignored and counted, a
     * frame already in the balloon counts once. ret: frames newly added. */
    VMM_HC_BALLOON_INFLATE = 9,
    /* args: frames, count (<= VMM_BALLOON_BATCH). Takes the pages back from
     * the balloon; each reads as its image or snapshot content, or zero,
     * unless the guest wrote it while it was in the balloon.
     * ret: frames removed. */
    VMM_HC_BALLOON_DEFLATE = 10,
    /* args: addr, len. Reports a free range: the host drops the whole pages
     * inside it. The guest keeps them; each reads as its image or snapshot
     * content, or zero, until written. ret: pages dropped. */
    VMM_HC_FREE_RANGE = 11,
};

#define VMM_BALLOON_BATCH 512u /* max frames of one inflate or deflate call */

enum vmm_clock_id {
    VMM_CLOCK_MONOTONIC = 0,
    VMM_CLOCK_REALTIME = 1,
};

/* Errors, returned negated in vmm_hypercall.ret. Values match Linux errno. */
#define VMM_EINTR 4      /* a wait returned early: the balloon target changed */
#define VMM_EFAULT 14    /* a buffer lies outside guest RAM or in the reserved area */
#define VMM_EINVAL 22    /* an argument is invalid */
#define VMM_ENOSYS 38    /* unknown hypercall number */
#define VMM_EMSGSIZE 90  /* a message or reply does not fit */
#define VMM_ETIMEDOUT 110 /* the deadline passed */

#ifdef __cplusplus
static_assert(sizeof(struct vmm_boot_info) == 2088, "boot info layout is part of the ABI");
static_assert(sizeof(struct vmm_hypercall) == 64, "hypercall block layout is part of the ABI");
#else
_Static_assert(sizeof(struct vmm_boot_info) == 2088, "boot info layout is part of the ABI");
_Static_assert(sizeof(struct vmm_hypercall) == 64, "hypercall block layout is part of the ABI");
#endif

#endif /* __ASSEMBLER__ */

#endif /* VMM_ABI_H */
