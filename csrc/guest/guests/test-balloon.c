/*
 * A guest that touches and frees memory on request, for the balloon tests
 * and benchmark. Requests, each answered with a short text reply:
 *     touch <bytes>   allocate <bytes> and write a pattern to every page
 *     verify          check the pattern of the touched block ("ok" or "bad")
 *     free            free the touched block without free page reporting
 *     free-report     free the touched block with free page reporting
 *     balloon         pages in the balloon, as the guest counts them
 *     nonzero <bytes> allocate <bytes> without writing them, reply with the
 *                     number of whole pages inside that are not all zero,
 *                     and free the allocation again without reporting it
 *     bad-frames      one raw inflate with hostile frame numbers (past RAM, in
 *                     the reserved area, above 4 GiB, all ones, one valid
 *                     frame twice); replies "added <n>" with the host's count
 *     ping            "pong"
 */
#include "vmm_guest.h"

static uint8_t *block;
static size_t block_size;

static int starts_with(const uint8_t *request, size_t len, const char *word)
{
    size_t n = strlen(word);

    return len >= n && memcmp(request, word, n) == 0;
}

static uint64_t parse_number(const uint8_t *text, size_t len)
{
    uint64_t value = 0;

    for (size_t i = 0; i < len && text[i] >= '0' && text[i] <= '9'; i++)
        value = value * 10 + (uint64_t)(text[i] - '0');
    return value;
}

static uint8_t pattern(size_t page)
{
    return (uint8_t)(0xA5 ^ (page * 7));
}

/* Returns the number of whole pages inside [start, start + size) that
 * contain a non-zero byte. */
static uint64_t count_nonzero_pages(const uint8_t *start, size_t size)
{
    uintptr_t first = ((uintptr_t)start + VMM_PAGE_SIZE - 1) & ~(uintptr_t)(VMM_PAGE_SIZE - 1);
    uintptr_t end = ((uintptr_t)start + size) & ~(uintptr_t)(VMM_PAGE_SIZE - 1);
    uint64_t nonzero = 0;

    for (uintptr_t page = first; page < end; page += VMM_PAGE_SIZE) {
        const uint64_t *words = (const uint64_t *)page;

        for (size_t i = 0; i < VMM_PAGE_SIZE / sizeof(uint64_t); i++) {
            if (words[i] != 0) {
                nonzero++;
                break;
            }
        }
    }
    return nonzero;
}

static int64_t handle(const uint8_t *request, size_t len, uint8_t *reply, size_t cap)
{
    const char *answer = "unknown request";
    char text[64];

    if (starts_with(request, len, "touch ")) {
        if (block != NULL)
            vmm_free_unreported(block);
        block_size = (size_t)parse_number(request + 6, len - 6);
        block = vmm_malloc(block_size);
        if (block == NULL) {
            block_size = 0;
            answer = "out of memory";
        } else {
            for (size_t offset = 0; offset < block_size; offset += VMM_PAGE_SIZE)
                block[offset] = pattern(offset / VMM_PAGE_SIZE);
            vmm_snprintf(text, sizeof(text), "ok %llu", (unsigned long long)block_size);
            answer = text;
        }
    } else if (starts_with(request, len, "verify")) {
        answer = block == NULL ? "no block" : "ok";
        for (size_t offset = 0; block != NULL && offset < block_size; offset += VMM_PAGE_SIZE) {
            if (block[offset] != pattern(offset / VMM_PAGE_SIZE)) {
                answer = "bad";
                break;
            }
        }
    } else if (starts_with(request, len, "free-report")) {
        vmm_free(block);
        block = NULL;
        answer = "ok";
    } else if (starts_with(request, len, "free")) {
        vmm_free_unreported(block);
        block = NULL;
        answer = "ok";
    } else if (starts_with(request, len, "balloon")) {
        vmm_snprintf(text, sizeof(text), "%llu", (unsigned long long)vmm_balloon_pages());
        answer = text;
    } else if (starts_with(request, len, "nonzero ")) {
        size_t size = (size_t)parse_number(request + 8, len - 8);
        uint8_t *probe = vmm_malloc(size);

        if (probe == NULL) {
            answer = "out of memory";
        } else {
            vmm_snprintf(text, sizeof(text), "%llu",
                         (unsigned long long)count_nonzero_pages(probe, size));
            vmm_free_unreported(probe);
            answer = text;
        }
    } else if (starts_with(request, len, "bad-frames")) {
        /* The valid frame is a free heap page: the last whole page below
         * the stack reserve, which nothing allocates in these tests. */
        uint64_t ram_pages = vmm_ram_size() / VMM_PAGE_SIZE;
        uint64_t valid = ram_pages - VMM_STACK_RESERVE / VMM_PAGE_SIZE - 1;
        uint64_t frames[] = {
            ram_pages,                      /* first frame past RAM */
            ram_pages + 100,
            1,                              /* reserved area */
            (5ull << 30) / VMM_PAGE_SIZE,   /* 5 GiB: above 4 GiB and past RAM */
            1ull << 52,                     /* frame * 4096 overflows 64 bits */
            ~0ull,
            valid,
            valid,                          /* the same frame twice counts once */
        };
        int64_t added = vmm_hypercall(VMM_HC_BALLOON_INFLATE, (uintptr_t)frames,
                                      sizeof(frames) / sizeof(frames[0]), 0, 0);
        vmm_snprintf(text, sizeof(text), "added %lld", (long long)added);
        answer = text;
    } else if (starts_with(request, len, "ping")) {
        answer = "pong";
    }
    size_t n = strlen(answer);

    if (n > cap)
        return -1;
    memcpy(reply, answer, n);
    return (int64_t)n;
}

int main(void)
{
    vmm_serve(handle);
}
