/*
 * A guest that touches and frees memory on request, for the balloon tests
 * and benchmark. Requests, each answered with a short text reply:
 *     touch <bytes>   allocate <bytes> and write a pattern to every page
 *     verify          check the pattern of the touched block ("ok" or "bad")
 *     free            free the touched block without free page reporting
 *     free-report     free the touched block with free page reporting
 *     balloon         pages in the balloon, as the guest counts them
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
