/*
 * Prints "spinning" and then loops forever without hypercalls, so the host
 * must stop the vCPU from outside.
 */
#include "vmm_guest.h"

int main(void)
{
    vmm_puts("spinning");
    /* An asm jump to itself, so the compiler cannot remove or change the loop. */
    __asm__ volatile("1: jmp 1b");
    __builtin_unreachable();
}
