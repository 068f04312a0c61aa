/*
 * Hypercall wrappers and boot information accessors.
 */
#include "vmm_guest.h"

#define BOOT_INFO ((const volatile struct vmm_boot_info *)VMM_BOOT_INFO_ADDR)

/* Rings the doorbell with `call` and returns its result. */
static int64_t ring(struct vmm_hypercall *call)
{
    /*
     * One 8-byte store of the block's address to the doorbell. The VMM runs
     * the hypercall during the store, so it reads the block and any input
     * buffer, and writes `ret` and any output buffer, before the next
     * instruction. The "memory" clobber makes the compiler finish all stores
     * to those buffers before the asm and reload memory after it.
     */
    __asm__ volatile("movq %0, (%1)"
                     :
                     : "r"(call), "r"((uint64_t)VMM_DOORBELL_ADDR)
                     : "memory");
    return call->ret;
}

int64_t vmm_hypercall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3)
{
    struct vmm_hypercall call = {
        .nr = nr,
        .args = {a0, a1, a2, a3},
        .ret = 0,
    };

    return ring(&call);
}

int64_t vmm_reply_wait(const void *reply, size_t reply_len, void *buf, size_t cap,
                       uint64_t deadline_ns)
{
    struct vmm_hypercall call = {
        .nr = VMM_HC_REPLY_WAIT,
        .args = {(uintptr_t)reply, reply_len, (uintptr_t)buf, cap, deadline_ns},
        .ret = 0,
    };

    return ring(&call);
}

/* The VMM rejects buffers below VMM_RESERVED_END, which includes the boot
 * information block. Returns true when [buf, buf + len) lies inside that block,
 * so the caller can pass a copy instead. */
static int in_boot_info(const void *buf, size_t len)
{
    uintptr_t start = (uintptr_t)buf;

    return start >= VMM_BOOT_INFO_ADDR &&
           start - VMM_BOOT_INFO_ADDR <= sizeof(struct vmm_boot_info) &&
           len <= sizeof(struct vmm_boot_info) - (start - VMM_BOOT_INFO_ADDR);
}

/* Performs a hypercall whose arguments are (buf, len), copying a buffer that
 * lies in the boot information block to the stack first. */
static int64_t hypercall_with_buffer(uint64_t nr, const void *buf, size_t len)
{
    if (len > 0 && in_boot_info(buf, len)) {
        uint8_t copy[sizeof(struct vmm_boot_info)];

        memcpy(copy, buf, len);
        return vmm_hypercall(nr, (uintptr_t)copy, len, 0, 0);
    }
    return vmm_hypercall(nr, (uintptr_t)buf, len, 0, 0);
}

int64_t vmm_write(const void *buf, size_t len)
{
    return hypercall_with_buffer(VMM_HC_CONSOLE_WRITE, buf, len);
}

int64_t vmm_puts(const char *s)
{
    int64_t written = vmm_write(s, strlen(s));

    if (written < 0)
        return written;

    int64_t newline = vmm_write("\n", 1);

    return newline < 0 ? newline : written + newline;
}

_Noreturn void vmm_exit(int code)
{
    vmm_hypercall(VMM_HC_EXIT, (uint64_t)(uint32_t)code, 0, 0, 0);
    /* Unreachable unless the VMM breaks the ABI. The invalid-opcode exception
     * ends the VM with a crash report instead of running on. */
    __builtin_trap();
}

int64_t vmm_wait(void *buf, size_t cap, uint64_t deadline_ns)
{
    return vmm_hypercall(VMM_HC_WAIT, (uintptr_t)buf, cap, deadline_ns, 0);
}

int64_t vmm_reply(const void *buf, size_t len)
{
    return hypercall_with_buffer(VMM_HC_REPLY, buf, len);
}

int64_t vmm_clock_ns(int clock_id)
{
    return vmm_hypercall(VMM_HC_CLOCK, (uint64_t)(int64_t)clock_id, 0, 0, 0);
}

int64_t vmm_random(void *buf, size_t len)
{
    uint8_t *cursor = buf;
    size_t left = len;

    while (left > 0) {
        size_t chunk = left < VMM_RANDOM_MAX ? left : VMM_RANDOM_MAX;
        int64_t ret = vmm_hypercall(VMM_HC_RANDOM, (uintptr_t)cursor, chunk, 0, 0);

        if (ret < 0)
            return ret;
        cursor += chunk;
        left -= chunk;
    }
    return (int64_t)len;
}

const volatile struct vmm_boot_info *vmm_boot_info(void)
{
    return BOOT_INFO;
}

uint64_t vmm_vm_id(void)
{
    return BOOT_INFO->vm_id;
}

uint64_t vmm_random_seed(void)
{
    return BOOT_INFO->random_seed;
}

const char *vmm_cmdline(void)
{
    /* The cast drops volatile so that callers can treat the text as an
     * ordinary string. */
    return (const char *)BOOT_INFO->cmdline;
}

uint64_t vmm_ram_size(void)
{
    return BOOT_INFO->ram_size;
}
