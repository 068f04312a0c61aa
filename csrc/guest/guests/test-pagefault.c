/*
 * Reads from 0x40000000000, far above any guest RAM, which ends the VM with a
 * page fault.
 */
#include "vmm_guest.h"

#define UNMAPPED_ADDR 0x40000000000ull

int main(void)
{
    vmm_printf("test-pagefault: reading unmapped address 0x%llx\n", UNMAPPED_ADDR);

    uint64_t value = *(volatile uint64_t *)UNMAPPED_ADDR;

    vmm_printf("test-pagefault: unexpected: the read returned 0x%llx\n",
               (unsigned long long)value);
    return 1;
}
