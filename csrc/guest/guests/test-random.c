/*
 * Replies to every message with
 *     {"id":<vm id>,"seed":"<boot random_seed, 16 hex digits>","random":"<16 bytes, 32 hex digits>"}
 * The random bytes come from the random hypercall on each call, and the seed
 * is read from the boot information page each time, so two clones of one
 * snapshot must reply with different values.
 */
#include "vmm_guest.h"

static int64_t handle(const uint8_t *request, size_t len, uint8_t *reply, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t bytes[16];
    char random_hex[33];

    (void)request;
    (void)len;
    if (vmm_random(bytes, sizeof(bytes)) != (int64_t)sizeof(bytes))
        return -1;
    for (size_t i = 0; i < sizeof(bytes); i++) {
        random_hex[2 * i] = hex[bytes[i] >> 4];
        random_hex[2 * i + 1] = hex[bytes[i] & 0xf];
    }
    random_hex[32] = '\0';
    int n = vmm_snprintf((char *)reply, cap, "{\"id\":%llu,\"seed\":\"%016llx\",\"random\":\"%s\"}",
                         (unsigned long long)vmm_vm_id(), (unsigned long long)vmm_random_seed(),
                         random_hex);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

int main(void)
{
    vmm_serve(handle);
}
