/*
 * Carries a 4 MiB initialized read-only array in its ELF file and replies to
 * every message with a 64-bit checksum of the whole array as decimal text.
 * Each call reads every page of the array, so VMs that share image pages
 * through the host's page cache or a snapshot all touch the same 4 MiB.
 *
 * Word i of the array is 0x5348415245000000 + i ("SHARE" in the high bytes),
 * so every word and every page differs and a page loaded from the wrong file
 * offset changes the checksum. The checksum is FNV-1a over the 64-bit words:
 * h = 0xcbf29ce484222325, then h = (h ^ word) * 0x100000001b3 for each word.
 */
#include "vmm_guest.h"

#define SHARE_WORDS 524288 /* 4 MiB of uint64_t */

/* The assembler generates the array, so GCC cannot see its contents and fold
 * the checksum into a constant, and the C compiler need not parse 512 Ki
 * initializers. */
__asm__(".pushsection .rodata.share_image, \"a\", @progbits\n"
        ".balign 4096\n"
        "share_image:\n"
        ".set share_index, 0\n"
        ".rept 524288\n"
        ".quad 0x5348415245000000 + share_index\n"
        ".set share_index, share_index + 1\n"
        ".endr\n"
        ".size share_image, . - share_image\n"
        ".popsection\n");

extern const uint64_t share_image[SHARE_WORDS];

static uint64_t checksum_image(void)
{
    uint64_t hash = 0xcbf29ce484222325ull;

    for (unsigned i = 0; i < SHARE_WORDS; i++)
        hash = (hash ^ share_image[i]) * 0x100000001b3ull;
    return hash;
}

static int64_t reply_checksum(const uint8_t *req, size_t len, uint8_t *reply, size_t cap)
{
    (void)req;
    (void)len;
    return vmm_snprintf((char *)reply, cap, "%llu", (unsigned long long)checksum_image());
}

int main(void)
{
    vmm_serve(reply_checksum);
}
