/*
 * Prints a greeting with the VM id, then the command line, and exits 0.
 */
#include "vmm_guest.h"

int main(void)
{
    vmm_printf("Hello from node-vmm guest %llu\n", (unsigned long long)vmm_vm_id());
    vmm_printf("cmdline: %s\n", vmm_cmdline());
    return 0;
}
