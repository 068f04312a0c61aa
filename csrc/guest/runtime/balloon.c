/*
 * The guest side of the memory balloon. Pages for the balloon come from
 * vmm_malloc(), so they are never pages in use. They are held in chunks of up
 * to CHUNK_PAGES (1 MiB) whole pages, each inside one allocation one page
 * larger, and reported to the host as lists of page frame numbers. The extra
 * page holds the allocator's header and stays with the guest, so larger
 * chunks leave less memory behind.
 */
#include "vmm_guest.h"

#define CHUNK_PAGES 256u

struct chunk {
    void *allocation;     /* from vmm_malloc(), freed on deflate */
    uint64_t first_frame; /* first whole page inside the allocation */
    uint64_t pages;
};

static struct chunk *chunks;
static size_t chunk_count;
static size_t chunk_capacity;
static uint64_t balloon_pages;

uint64_t vmm_balloon_pages(void)
{
    return balloon_pages;
}

/* Sends `count` frames to the host with `nr` (inflate or deflate). */
static void send_frames(uint64_t nr, const uint64_t *frames, size_t count)
{
    while (count > 0) {
        size_t batch = count < VMM_BALLOON_BATCH ? count : VMM_BALLOON_BATCH;

        vmm_hypercall(nr, (uintptr_t)frames, batch, 0, 0);
        frames += batch;
        count -= batch;
    }
}

static int reserve_chunk_slot(void)
{
    if (chunk_count < chunk_capacity)
        return 1;

    size_t capacity = chunk_capacity == 0 ? 64 : chunk_capacity * 2;
    struct chunk *grown = vmm_realloc(chunks, capacity * sizeof(*chunks));

    if (grown == NULL)
        return 0;
    chunks = grown;
    chunk_capacity = capacity;
    return 1;
}

/* Takes one chunk of up to `want` pages from the allocator into the balloon.
 * Returns the pages added, 0 when the heap has no room left. */
static uint64_t inflate_chunk(uint64_t want)
{
    uint64_t pages = want < CHUNK_PAGES ? want : CHUNK_PAGES;
    uint64_t frames[CHUNK_PAGES];

    if (!reserve_chunk_slot())
        return 0;

    /* One extra page, so that `pages` whole pages fit after aligning. */
    uint8_t *allocation = vmm_malloc((pages + 1) * VMM_PAGE_SIZE);

    if (allocation == NULL)
        return 0;

    uint64_t first = ((uintptr_t)allocation + VMM_PAGE_SIZE - 1) / VMM_PAGE_SIZE;

    for (uint64_t i = 0; i < pages; i++)
        frames[i] = first + i;
    send_frames(VMM_HC_BALLOON_INFLATE, frames, pages);
    chunks[chunk_count].allocation = allocation;
    chunks[chunk_count].first_frame = first;
    chunks[chunk_count].pages = pages;
    chunk_count++;
    balloon_pages += pages;
    return pages;
}

static void deflate_chunk(void)
{
    struct chunk *chunk = &chunks[chunk_count - 1];
    uint64_t frames[CHUNK_PAGES];

    for (uint64_t i = 0; i < chunk->pages; i++)
        frames[i] = chunk->first_frame + i;
    send_frames(VMM_HC_BALLOON_DEFLATE, frames, chunk->pages);
    /* Unreported: the host already dropped these pages. */
    vmm_free_unreported(chunk->allocation);
    balloon_pages -= chunk->pages;
    chunk_count--;
}

uint64_t vmm_balloon_update(void)
{
    int64_t target = vmm_hypercall(VMM_HC_BALLOON_TARGET, 0, 0, 0, 0);

    if (target < 0)
        return balloon_pages;
    while (balloon_pages < (uint64_t)target) {
        if (inflate_chunk((uint64_t)target - balloon_pages) == 0)
            break;
    }
    while (balloon_pages > (uint64_t)target && chunk_count > 0)
        deflate_chunk();
    return balloon_pages;
}
