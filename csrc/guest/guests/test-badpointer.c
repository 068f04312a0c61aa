/*
 * Passes bad buffers to raw hypercalls and prints, for each case, "ok" when
 * the VMM returned -VMM_EFAULT and "unexpected <value>" otherwise. Then it
 * stores the address of a hypercall block outside guest RAM to the doorbell,
 * which ends the VM with reason fault.
 */
#include "vmm_guest.h"

#define FAR_ABOVE_RAM 0x40000000000ull

static int failures;

static void check_efault(const char *name, int64_t ret)
{
    if (ret == -VMM_EFAULT) {
        vmm_printf("%s: ok\n", name);
    } else {
        vmm_printf("%s: unexpected %lld\n", name, (long long)ret);
        failures++;
    }
}

int main(void)
{
    uint64_t ram_size = vmm_ram_size();
    char valid[16] = "valid buffer\n";

    check_efault("console write in reserved area",
                 vmm_hypercall(VMM_HC_CONSOLE_WRITE, 0x1000, 16, 0, 0));
    check_efault("console write across end of RAM",
                 vmm_hypercall(VMM_HC_CONSOLE_WRITE, ram_size - 8, 64, 0, 0));
    check_efault("console write with overflowing length",
                 vmm_hypercall(VMM_HC_CONSOLE_WRITE, (uintptr_t)valid, 0xFFFFFFFFFFFFFFF0ull,
                               0, 0));
    check_efault("random far above RAM",
                 vmm_hypercall(VMM_HC_RANDOM, FAR_ABOVE_RAM, 16, 0, 0));
    vmm_printf("bad pointer cases failed: %d\n", failures);

    vmm_puts("ringing the doorbell with a block address far above RAM");
    __asm__ volatile("movq %0, (%1)"
                     :
                     : "r"(FAR_ABOVE_RAM), "r"((uint64_t)VMM_DOORBELL_ADDR)
                     : "memory");
    vmm_puts("unexpected: the VM survived a bad hypercall block");
    return 1;
}
