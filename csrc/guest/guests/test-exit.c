/*
 * Exits with the code given as a decimal number on the command line, such as
 * "42" or "-1". An empty command line exits 0. Leading and trailing spaces are
 * ignored. Any other text prints an error and exits 2. The VMM keeps the low
 * 8 bits of the code.
 */
#include "vmm_guest.h"

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int main(void)
{
    const char *cursor = vmm_cmdline();
    int negative = 0;
    int digits = 0;
    int code = 0;

    while (is_space(*cursor))
        cursor++;
    if (*cursor == '-') {
        negative = 1;
        cursor++;
    }
    while (*cursor >= '0' && *cursor <= '9') {
        /* Only the low 8 bits reach the host, so reducing mod 256 as we go
         * gives the same exit code and cannot overflow. */
        code = (code * 10 + (*cursor - '0')) & 0xff;
        digits++;
        cursor++;
    }
    while (is_space(*cursor))
        cursor++;

    if (*cursor != '\0' || (negative && digits == 0)) {
        vmm_printf("test-exit: invalid exit code \"%s\", expected a decimal number\n",
                   vmm_cmdline());
        return 2;
    }
    if (negative)
        code = -code;
    vmm_printf("test-exit: exiting with code %d\n", code & 0xff);
    return code;
}
