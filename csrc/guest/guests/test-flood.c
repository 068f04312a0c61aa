/*
 * Writes 4 MiB of console output in 4 KiB writes, then prints "flood done" and
 * exits 0. Console writes never block, so the host must drop and count the
 * bytes that do not fit in its console buffer.
 */
#include "vmm_guest.h"

#define FLOOD_BYTES (4u << 20)
#define CHUNK_BYTES 4096u
#define LINE_BYTES 64u

static char chunk[CHUNK_BYTES];

int main(void)
{
    unsigned unexpected = 0;

    /* 64 lines of 63 letters and a newline. */
    for (unsigned i = 0; i < CHUNK_BYTES; i++)
        chunk[i] = i % LINE_BYTES == LINE_BYTES - 1 ? '\n' : (char)('a' + (i / LINE_BYTES) % 26);

    for (unsigned sent = 0; sent < FLOOD_BYTES; sent += CHUNK_BYTES) {
        if (vmm_write(chunk, CHUNK_BYTES) != (int64_t)CHUNK_BYTES)
            unexpected++;
    }

    if (unexpected != 0)
        vmm_printf("flood: %u console writes returned less than %u\n", unexpected, CHUNK_BYTES);
    vmm_puts("flood done");
    return 0;
}
