/*
 * C memory and string functions. GCC emits calls to memcpy, memmove, memset
 * and memcmp for struct copies and large initializers even with
 * -ffreestanding, so these keep their standard names. The build compiles this
 * file with -fno-tree-loop-distribute-patterns, which stops GCC from turning
 * the loops below back into calls to the functions they implement.
 */
#include "vmm_guest.h"

/* rep movsb and rep stosb run in user mode and are fast on CPUs with ERMSB.
 * The direction flag is clear, as the ABI requires at every call. */
void *memcpy(void *dst, const void *src, size_t n)
{
    void *out = dst;

    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
    return out;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    /* Copying forward is safe unless dst starts inside [src, src + n). */
    if ((uintptr_t)d - (uintptr_t)s >= n)
        return memcpy(dst, src, n);
    while (n > 0) {
        n--;
        d[n] = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    void *out = dst;

    __asm__ volatile("rep stosb" : "+D"(dst), "+c"(n) : "a"(c) : "memory");
    return out;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a;
    const unsigned char *y = b;

    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

size_t strlen(const char *s)
{
    size_t len = 0;

    while (s[len] != '\0')
        len++;
    return len;
}

int strcmp(const char *a, const char *b)
{
    const unsigned char *x = (const unsigned char *)a;
    const unsigned char *y = (const unsigned char *)b;

    while (*x != '\0' && *x == *y) {
        x++;
        y++;
    }
    return *x < *y ? -1 : *x > *y;
}
