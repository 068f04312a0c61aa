/*
 * Replies to every message with the message bytes unchanged. The engine's
 * benchmarks use it to measure the cost of one message round trip.
 */
#include "vmm_guest.h"

static int64_t echo(const uint8_t *req, size_t len, uint8_t *reply, size_t cap)
{
    if (len > cap)
        return -1;
    memcpy(reply, req, len);
    return (int64_t)len;
}

int main(void)
{
    vmm_serve(echo);
}
