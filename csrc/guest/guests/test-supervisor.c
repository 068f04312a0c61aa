/*
 * Writes to 0x2000, inside the supervisor area that user mode cannot access,
 * which ends the VM with a page fault.
 */
#include "vmm_guest.h"

#define SUPERVISOR_ADDR 0x2000ull

int main(void)
{
    vmm_printf("test-supervisor: writing supervisor address 0x%llx\n", SUPERVISOR_ADDR);
    *(volatile uint64_t *)SUPERVISOR_ADDR = 0;
    vmm_puts("test-supervisor: unexpected: the write completed");
    return 1;
}
