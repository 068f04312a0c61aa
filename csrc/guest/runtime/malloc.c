/*
 * First-fit heap allocator over [_end rounded up to a page,
 * ram size - VMM_STACK_RESERVE).
 *
 * Every block starts with a 16-byte header. An allocated block's header stores
 * its size and a tag that vmm_free() checks. A free block's header stores its
 * size and the next free block. Free blocks form one list sorted by address,
 * and adjacent free blocks are merged when one is freed, so no two free blocks
 * touch.
 *
 * The allocator writes only to block headers. In a free block of `size` bytes
 * at `addr`, the whole pages inside [addr + 16, addr + size) therefore hold
 * nothing the allocator needs, so their contents may be discarded (for example
 * given back to the host). It also means heap pages that were never allocated
 * are never touched.
 */
#include "vmm_guest.h"

#define HEADER_SIZE ((size_t)16)
#define BLOCK_ALIGN ((size_t)16)
#define MIN_BLOCK ((size_t)32) /* a header and the smallest payload */

/* Tag of an allocated block: this constant XOR the block's address, so that a
 * pointer into a free block or a copied header fails the check. */
#define USED_TAG 0x75736564626c6b21ull

/* Defined by guest.ld after the last loaded section. */
extern char _end[];

struct block {
    size_t size; /* bytes including the header, a multiple of BLOCK_ALIGN */
    union {
        struct block *next; /* free block: next free block by address, or NULL */
        uint64_t tag;       /* allocated block: USED_TAG ^ block address */
    };
};

_Static_assert(sizeof(struct block) == HEADER_SIZE, "block header must be 16 bytes");

static struct block *free_list;
static uintptr_t heap_start;
static uintptr_t heap_end;
static int heap_ready;

static uintptr_t align_up(uintptr_t value, uintptr_t align)
{
    return (value + align - 1) & ~(align - 1);
}

static void heap_init(void)
{
    uint64_t ram_size = vmm_ram_size();

    heap_ready = 1;
    heap_start = align_up((uintptr_t)_end, VMM_PAGE_SIZE);
    heap_end = ram_size > VMM_STACK_RESERVE ? (ram_size - VMM_STACK_RESERVE) & ~(BLOCK_ALIGN - 1) : 0;
    if (heap_end < heap_start + MIN_BLOCK) {
        heap_end = heap_start;
        return;
    }
    free_list = (struct block *)heap_start;
    free_list->size = heap_end - heap_start;
    free_list->next = NULL;
}

/* Returns the block size that holds `size` payload bytes, or 0 when no block
 * in the heap could. */
static size_t block_size_for(size_t size)
{
    if (size > heap_end - heap_start)
        return 0;

    size_t need = align_up(size + HEADER_SIZE, BLOCK_ALIGN);

    return need < MIN_BLOCK ? MIN_BLOCK : need;
}

static void mark_used(struct block *block, size_t size)
{
    block->size = size;
    block->tag = USED_TAG ^ (uintptr_t)block;
}

/* Returns the header of the allocated block at `ptr`, or ends the VM with an
 * invalid-opcode exception when `ptr` is not one. */
static struct block *checked_block(void *ptr)
{
    uintptr_t addr = (uintptr_t)ptr - HEADER_SIZE;
    struct block *block = (struct block *)addr;

    if (!heap_ready || (uintptr_t)ptr % BLOCK_ALIGN != 0 || (uintptr_t)ptr < heap_start + HEADER_SIZE ||
        (uintptr_t)ptr >= heap_end)
        __builtin_trap();
    if (block->tag != (USED_TAG ^ addr) || block->size < MIN_BLOCK || block->size % BLOCK_ALIGN != 0 ||
        block->size > heap_end - addr)
        __builtin_trap();
    return block;
}

/* Adds `block` to the free list and merges it with free neighbours. */
static void insert_free(struct block *block)
{
    uintptr_t addr = (uintptr_t)block;
    struct block *prev = NULL;
    struct block *next = free_list;

    while (next != NULL && (uintptr_t)next < addr) {
        prev = next;
        next = next->next;
    }

    /* Overlap with a free neighbour means a double free or a corrupted heap. */
    if ((prev != NULL && (uintptr_t)prev + prev->size > addr) ||
        (next != NULL && addr + block->size > (uintptr_t)next))
        __builtin_trap();

    if (next != NULL && addr + block->size == (uintptr_t)next) {
        block->size += next->size;
        block->next = next->next;
    } else {
        block->next = next;
    }

    if (prev == NULL) {
        free_list = block;
    } else if ((uintptr_t)prev + prev->size == addr) {
        prev->size += block->size;
        prev->next = block->next;
    } else {
        prev->next = block;
    }
}

void *vmm_malloc(size_t size)
{
    if (!heap_ready)
        heap_init();

    size_t need = block_size_for(size);

    if (need == 0)
        return NULL;

    for (struct block **link = &free_list; *link != NULL; link = &(*link)->next) {
        struct block *block = *link;

        if (block->size < need)
            continue;

        /* Take the front of the block and leave the rest free, unless the
         * rest is too small to be a block. */
        if (block->size - need >= MIN_BLOCK) {
            struct block *rest = (struct block *)((uintptr_t)block + need);

            rest->size = block->size - need;
            rest->next = block->next;
            *link = rest;
        } else {
            need = block->size;
            *link = block->next;
        }
        mark_used(block, need);
        return (uint8_t *)block + HEADER_SIZE;
    }
    return NULL;
}

static int free_page_reporting = 1;

void vmm_set_free_page_reporting(int enabled)
{
    free_page_reporting = enabled;
}

void vmm_free(void *ptr)
{
    if (ptr == NULL)
        return;

    struct block *block = checked_block(ptr);
    uintptr_t start = (uintptr_t)block + HEADER_SIZE;
    size_t length = block->size - HEADER_SIZE;

    insert_free(block);

    /* Merging writes only block headers, so everything after this block's
     * own header is free memory the host may drop. Small blocks are not
     * worth a hypercall. */
    if (free_page_reporting && length >= VMM_FREE_REPORT_MIN)
        vmm_hypercall(VMM_HC_FREE_RANGE, start, length, 0, 0);
}

void vmm_free_unreported(void *ptr)
{
    if (ptr == NULL)
        return;
    insert_free(checked_block(ptr));
}

void *vmm_calloc(size_t count, size_t size)
{
    if (size != 0 && count > SIZE_MAX / size)
        return NULL;

    size_t total = count * size;
    void *ptr = vmm_malloc(total);

    /* Freed blocks keep their old contents, so the block must be cleared. */
    if (ptr != NULL)
        memset(ptr, 0, total);
    return ptr;
}

/* Shrinks the allocated `block` to `need` bytes and frees the tail when the
 * tail is large enough to be a block. */
static void trim_block(struct block *block, size_t need)
{
    if (block->size - need < MIN_BLOCK)
        return;

    struct block *tail = (struct block *)((uintptr_t)block + need);

    tail->size = block->size - need;
    mark_used(block, need);
    insert_free(tail);
}

/* Grows the allocated `block` in place to at least `need` bytes by taking the
 * free block right after it. Returns whether it could. */
static int grow_in_place(struct block *block, size_t need)
{
    uintptr_t end = (uintptr_t)block + block->size;
    struct block **link = &free_list;

    while (*link != NULL && (uintptr_t)*link < end)
        link = &(*link)->next;

    struct block *next = *link;

    if (next == NULL || (uintptr_t)next != end || block->size + next->size < need)
        return 0;

    size_t combined = block->size + next->size;

    if (combined - need >= MIN_BLOCK) {
        struct block *rest = (struct block *)((uintptr_t)block + need);

        rest->size = combined - need;
        rest->next = next->next;
        *link = rest;
        mark_used(block, need);
    } else {
        *link = next->next;
        mark_used(block, combined);
    }
    return 1;
}

void *vmm_realloc(void *ptr, size_t size)
{
    if (ptr == NULL)
        return vmm_malloc(size);
    if (size == 0) {
        vmm_free(ptr);
        return NULL;
    }

    struct block *block = checked_block(ptr);
    size_t need = block_size_for(size);

    if (need == 0)
        return NULL;
    if (need <= block->size) {
        trim_block(block, need);
        return ptr;
    }
    if (grow_in_place(block, need))
        return ptr;

    void *moved = vmm_malloc(size);

    if (moved == NULL)
        return NULL;
    memcpy(moved, ptr, block->size - HEADER_SIZE);
    vmm_free(ptr);
    return moved;
}
