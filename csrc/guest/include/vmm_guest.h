/*
 * Runtime library for node-vmm guests.
 *
 * A guest is a freestanding, static x86-64 ELF program that the VMM enters in
 * 64-bit user mode with no operating system underneath. The runtime provides
 * the entry point, hypercall wrappers, a console formatter, the C memory and
 * string functions that GCC may call on its own, and a heap allocator. A guest
 * defines `int main(void)`; the runtime calls it and passes its return value to
 * vmm_exit().
 *
 * The guest runs on one vCPU and receives no interrupts, so the runtime takes
 * no locks.
 *
 * scripts/build-guests.js builds the guests in csrc/guest/guests/ and contains
 * the compiler and linker flags that a guest needs, including runtime/guest.ld.
 */
#ifndef VMM_GUEST_H
#define VMM_GUEST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes below the top of RAM that the heap leaves to the stack. The stack
 * starts at the top of RAM and grows down. Nothing detects a stack that grows
 * past this reserve, so it overwrites the end of the heap. */
#define VMM_STACK_RESERVE (256u * 1024u)

#define VMM_PRINTF_FORMAT(fmt_index, first_arg) \
    __attribute__((format(printf, fmt_index, first_arg)))

/* ---- Hypercalls ---------------------------------------------------------- */

/**
 * Performs hypercall `nr` with four arguments.
 *
 * Builds a struct vmm_hypercall on the stack, stores its address to
 * VMM_DOORBELL_ADDR and returns the `ret` field that the VMM wrote during
 * that store. Buffers passed as arguments must lie in guest RAM at or above
 * VMM_RESERVED_END.
 *
 * @returns a value >= 0 on success, or a negative VMM_E* error. VMM_HC_EXIT
 *          does not return.
 */
int64_t vmm_hypercall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3);

/**
 * Writes `len` bytes to the VMM console.
 *
 * Never blocks. Bytes that do not fit in the host's console buffer are dropped
 * and counted by the host, and still count as written. A buffer inside the
 * boot information block (such as vmm_cmdline()) is copied to the stack first,
 * because the VMM rejects buffers in the reserved area.
 *
 * @returns `len`, or -VMM_EFAULT when the buffer is not in guest RAM.
 */
int64_t vmm_write(const void *buf, size_t len);

/**
 * Writes the NUL-terminated string `s` followed by a newline to the console.
 *
 * @returns the number of bytes written including the newline, or a negative
 *          VMM_E* error.
 */
int64_t vmm_puts(const char *s);

/**
 * Ends the VM with exit code `code`. The VMM keeps the low 8 bits.
 */
_Noreturn void vmm_exit(int code);

/**
 * Waits for the next message from the host and copies it to `buf`.
 *
 * @param deadline_ns absolute VMM_CLOCK_MONOTONIC time in ns at which to give
 *        up, or 0 to wait without a deadline.
 * @returns the message length, -VMM_ETIMEDOUT when the deadline passed,
 *          -VMM_EMSGSIZE when the next message is longer than `cap` (the
 *          message stays queued), or -VMM_EFAULT for a bad buffer.
 */
int64_t vmm_wait(void *buf, size_t cap, uint64_t deadline_ns);

/**
 * Sends `len` bytes as the reply to the last message that vmm_wait() returned.
 * Like vmm_write(), it copies a buffer inside the boot information block to the
 * stack first.
 *
 * @returns 0, -VMM_EINVAL when no message awaits a reply, -VMM_EMSGSIZE when
 *          `len` > VMM_MSG_MAX, or -VMM_EFAULT for a bad buffer.
 */
int64_t vmm_reply(const void *buf, size_t len);

/**
 * Replies with `reply_len` bytes to the message that awaits a reply, if any,
 * then waits for the next message as vmm_wait() does. One exit to the host
 * instead of two, which is what vmm_serve() uses. `reply` must not lie in the
 * boot information block.
 *
 * @returns as vmm_wait(), or -VMM_EFAULT / -VMM_EMSGSIZE from the reply
 *          part, in which case it did not wait.
 */
int64_t vmm_reply_wait(const void *reply, size_t reply_len, void *buf, size_t cap,
                       uint64_t deadline_ns);

/**
 * Reads a host clock.
 *
 * @param clock_id VMM_CLOCK_MONOTONIC or VMM_CLOCK_REALTIME (ns since the Unix
 *        epoch).
 * @returns the time in nanoseconds, or a negative VMM_E* error for an unknown
 *          clock id.
 */
int64_t vmm_clock_ns(int clock_id);

/**
 * Fills `buf` with `len` random bytes from the host, in calls of at most
 * VMM_RANDOM_MAX bytes each.
 *
 * @returns `len`, or the first negative VMM_E* error, after which the
 *          contents of `buf` are unspecified.
 */
int64_t vmm_random(void *buf, size_t len);

/* ---- Boot information ----------------------------------------------------
 * Each accessor reads the boot information page when called, because a clone
 * of a snapshot gets a new vm id and random seed. Do not cache the values
 * across a point where the VM may be snapshotted and cloned. */

/** Returns the boot information block at VMM_BOOT_INFO_ADDR (read-only). */
const volatile struct vmm_boot_info *vmm_boot_info(void);

/** Returns the host-assigned id of this VM, unique within one VMM. */
uint64_t vmm_vm_id(void);

/** Returns 64 random bits that are new for every VM and every clone. */
uint64_t vmm_random_seed(void);

/**
 * Returns the NUL-terminated command line, which points into the boot
 * information page. Its contents may change when the VM is cloned.
 * The VMM rejects pointers into that page, so copy the text before passing it
 * to a raw hypercall (vmm_write(), vmm_reply() and vmm_printf() copy it
 * themselves).
 */
const char *vmm_cmdline(void);

/** Returns the size of guest RAM in bytes. */
uint64_t vmm_ram_size(void);

/* ---- Formatted output ----------------------------------------------------
 * Supported conversions are %d %i %u %x %X %o %c %s %p and %%. They take the
 * flags '-' '0' '+' ' ' '#', a width and a precision (digits or '*'), and the
 * length modifiers hh h l ll z j t. %p prints "0x" and hex digits, also for NULL.
 * Floating-point and other unsupported conversions print as their literal
 * text and consume no argument. */

/**
 * Formats like C vsnprintf() into `buf`, writing at most `size` bytes
 * including the terminating NUL. `buf` may be NULL when `size` is 0.
 *
 * @returns the length the full output would have, without the NUL.
 */
int vmm_vsnprintf(char *buf, size_t size, const char *fmt, va_list args);

/** Formats like C snprintf(); see vmm_vsnprintf(). */
int vmm_snprintf(char *buf, size_t size, const char *fmt, ...) VMM_PRINTF_FORMAT(3, 4);

/**
 * Formats like C vprintf() to the console, in console writes of up to 256
 * bytes.
 *
 * @returns the number of bytes formatted, or the first negative VMM_E* error
 *          of a console write.
 */
int vmm_vprintf(const char *fmt, va_list args);

/** Formats like C printf() to the console; see vmm_vprintf(). */
int vmm_printf(const char *fmt, ...) VMM_PRINTF_FORMAT(1, 2);

/* ---- Memory and strings --------------------------------------------------
 * Standard C functions with their standard names, because GCC emits calls to
 * memcpy, memmove, memset and memcmp even in freestanding code. */

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

/* ---- Heap ------------------------------------------------------------------
 * The heap spans [_end rounded up to a page, ram size - VMM_STACK_RESERVE).
 * Returned blocks are 16-byte aligned. vmm_free() and vmm_realloc() check the
 * block header and end the VM with an invalid-opcode exception (ud2) when the
 * pointer is not a live heap block, such as on a double free, because going on
 * would corrupt the heap. */

/**
 * Allocates `size` bytes. A `size` of 0 allocates a minimal block.
 *
 * @returns the block, or NULL when no free block is large enough.
 */
void *vmm_malloc(size_t size);

/** Releases a block from vmm_malloc(), vmm_calloc() or vmm_realloc(). NULL is ignored. */
void vmm_free(void *ptr);

/**
 * Allocates an array of `count` elements of `size` bytes, filled with zeros.
 *
 * @returns the block, or NULL when `count * size` overflows or the heap has
 *          no free block large enough.
 */
void *vmm_calloc(size_t count, size_t size);

/**
 * Resizes the block `ptr` to `size` bytes, moving it when it cannot grow in
 * place. NULL `ptr` acts as vmm_malloc(size). A `size` of 0 frees `ptr` and
 * returns NULL.
 *
 * @returns the resized block, or NULL when no free block is large enough, in
 *          which case `ptr` stays valid and unchanged.
 */
void *vmm_realloc(void *ptr, size_t size);

/* ---- Request loop --------------------------------------------------------- */

/** Smallest freed block, in bytes, that vmm_free() reports to the host. */
#define VMM_FREE_REPORT_MIN (64u * 1024u)

/**
 * Turns free page reporting on or off (on by default). With it on,
 * vmm_free() of a block of VMM_FREE_REPORT_MIN bytes or more reports the
 * whole pages inside it to the host, which drops them; the memory stays the
 * guest's and reads as its image or snapshot content, or zero, until written.
 */
void vmm_set_free_page_reporting(int enabled);

/** Frees like vmm_free() but never reports the block to the host. */
void vmm_free_unreported(void *ptr);

/**
 * Acts on the host's balloon target: takes free pages from the allocator and
 * hands them to the host until the balloon holds the target, or takes pages
 * back and frees them when the target is lower. Never takes pages in use.
 * It works in chunks of up to 256 pages: it stops below the target when no
 * free block fits the next chunk, and a deflate returns whole chunks, so the
 * balloon can end up to 255 pages below a lower target.
 * vmm_serve() calls it whenever a wait returns -VMM_EINTR.
 *
 * @returns pages in the balloon afterwards.
 */
uint64_t vmm_balloon_update(void);

/** Pages the guest has handed to the host through the balloon. */
uint64_t vmm_balloon_pages(void);

/**
 * Request handler for vmm_serve(): reads the request `req` of `len` bytes and
 * writes the reply to `reply`, which has room for `cap` (VMM_MSG_MAX) bytes.
 *
 * @returns the reply length. A negative value, or one above `cap`, makes
 *          vmm_serve() send an empty reply.
 */
typedef int64_t (*vmm_handler)(const uint8_t *req, size_t len, uint8_t *reply, size_t cap);

/**
 * Serves host messages forever. For each message it waits without a deadline,
 * calls `handler` and replies with the handler's result.
 *
 * Allocates a VMM_MSG_MAX request buffer and reply buffer from the heap. When
 * the allocation or a combined reply and wait fails, it prints the reason to
 * the console and ends the VM with exit code 1. When a wait returns
 * -VMM_EINTR it calls vmm_balloon_update() and waits again.
 */
_Noreturn void vmm_serve(vmm_handler handler);

#ifdef __cplusplus
}
#endif

#endif /* VMM_GUEST_H */
