/*
 * Prints the monotonic and realtime clocks in ns and 16 random bytes in hex,
 * then exits 0.
 */
#include "vmm_guest.h"

int main(void)
{
    uint8_t random[16];
    char hex[sizeof(random) * 2 + 1];

    vmm_printf("monotonic: %lld\n", (long long)vmm_clock_ns(VMM_CLOCK_MONOTONIC));
    vmm_printf("realtime: %lld\n", (long long)vmm_clock_ns(VMM_CLOCK_REALTIME));

    int64_t ret = vmm_random(random, sizeof(random));

    if (ret < 0) {
        vmm_printf("random: failed with error %lld\n", (long long)ret);
        return 1;
    }
    for (unsigned i = 0; i < sizeof(random); i++)
        vmm_snprintf(hex + 2 * i, 3, "%02x", random[i]);
    vmm_printf("random: %s\n", hex);
    return 0;
}
