/*
 * Checks the page permissions the VMM gives a guest: code is read-only,
 * and data, heap, stack and the boot information page are not executable.
 *
 * The command line names one action. An empty command line serves calls
 * instead, and each message names one action, so that snapshots and clones
 * can run the actions too.
 *
 *   allowed        reads code and .rodata, writes .data, heap and stack, and
 *                  calls a function. Prints "test-wx: allowed ok", or
 *                  replies "ok" to a call.
 *   write-text     writes to the first byte of a function.
 *   write-rodata   writes to a constant in .rodata.
 *   exec-rodata    calls into .rodata.
 *   exec-data      calls into .data.
 *   exec-stack     calls into the stack.
 *   exec-heap      calls into a heap block.
 *   exec-bootinfo  calls into the boot information page.
 *
 * Each write and exec action first prints "test-wx: ACTION target 0xADDR",
 * and the page fault at ADDR should end the VM. Where the access completes
 * instead, the guest prints "unexpected" and exits 1, or replies
 * "unexpected" to a call. An unknown action prints an error and exits 2.
 */
#include "vmm_guest.h"

#define OPCODE_RET 0xC3

/* The target of write-text. noinline keeps a body in .text to write to. */
__attribute__((noinline)) static int text_target(void)
{
    return 42;
}

static const uint64_t rodata_target = 0x5758524f44415441ull;

/* Initialized, so that it lies in .data rather than .bss. */
static uint8_t data_target[16] = {OPCODE_RET};

static void report(const char *action, const volatile void *target)
{
    vmm_printf("test-wx: %s target 0x%llx\n", action,
               (unsigned long long)(uintptr_t)target);
}

static void write_to(const char *action, volatile uint8_t *target)
{
    report(action, target);
    *target = OPCODE_RET;
}

/* Calls `code`. The instruction fetch should fault before anything there
 * runs, so the bytes at `code` do not matter unless the fetch completes. */
static void call_into(const char *action, const volatile uint8_t *code)
{
    void (*function)(void) = (void (*)(void))(uintptr_t)code;

    report(action, code);
    function();
}

/* Puts a `ret` at writable `code` and calls it, so that a call that runs
 * it returns. */
static void plant_and_call(const char *action, volatile uint8_t *code)
{
    code[0] = OPCODE_RET;
    call_into(action, code);
}

/* Runs the accesses that the permissions allow. Returns 0 when all work. */
static int run_allowed(void)
{
    volatile uint8_t stack_bytes[16];
    const volatile uint8_t *code = (const volatile uint8_t *)(uintptr_t)&text_target;
    volatile uint8_t *heap = vmm_malloc(64);
    int failures = 0;

    if (code[0] == 0) {
        vmm_puts("test-wx: unexpected: the code of text_target reads as 0");
        failures++;
    }
    if (*(const volatile uint64_t *)&rodata_target != 0x5758524f44415441ull) {
        vmm_puts("test-wx: unexpected: rodata_target has another value");
        failures++;
    }
    data_target[1] = 1;
    stack_bytes[0] = 2;
    if (heap == NULL) {
        vmm_puts("test-wx: unexpected: vmm_malloc(64) failed");
        failures++;
    } else {
        heap[0] = 3;
        vmm_free((void *)heap);
    }
    if (text_target() != 42 || stack_bytes[0] != 2) {
        vmm_puts("test-wx: unexpected: a call or a stack write went wrong");
        failures++;
    }
    return failures;
}

/* Runs `action`. Returns 0 for allowed, 1 when a fault did not happen and
 * 2 for an unknown action. */
static int run_action(const char *action)
{
    volatile uint8_t stack_code[16];

    if (strcmp(action, "allowed") == 0)
        return run_allowed() == 0 ? 0 : 1;
    if (strcmp(action, "write-text") == 0) {
        write_to(action, (volatile uint8_t *)(uintptr_t)&text_target);
    } else if (strcmp(action, "write-rodata") == 0) {
        write_to(action, (volatile uint8_t *)(uintptr_t)&rodata_target);
    } else if (strcmp(action, "exec-rodata") == 0) {
        call_into(action, (const volatile uint8_t *)(uintptr_t)&rodata_target);
    } else if (strcmp(action, "exec-data") == 0) {
        plant_and_call(action, data_target);
    } else if (strcmp(action, "exec-stack") == 0) {
        plant_and_call(action, stack_code);
    } else if (strcmp(action, "exec-heap") == 0) {
        volatile uint8_t *heap = vmm_malloc(64);

        if (heap == NULL) {
            vmm_puts("test-wx: unexpected: vmm_malloc(64) failed");
            return 1;
        }
        plant_and_call(action, heap);
    } else if (strcmp(action, "exec-bootinfo") == 0) {
        call_into(action, (volatile uint8_t *)(uintptr_t)VMM_BOOT_INFO_ADDR);
    } else {
        vmm_printf("test-wx: unknown action \"%s\"\n", action);
        return 2;
    }
    vmm_printf("test-wx: unexpected: %s completed without a fault\n", action);
    return 1;
}

static int64_t serve_action(const uint8_t *req, size_t len, uint8_t *reply, size_t cap)
{
    char action[32];

    if (len >= sizeof(action))
        return vmm_snprintf((char *)reply, cap, "action too long");
    memcpy(action, req, len);
    action[len] = '\0';
    switch (run_action(action)) {
    case 0:
        return vmm_snprintf((char *)reply, cap, "ok");
    case 1:
        return vmm_snprintf((char *)reply, cap, "unexpected");
    default:
        return vmm_snprintf((char *)reply, cap, "unknown action");
    }
}

int main(void)
{
    const char *action = vmm_cmdline();
    int result;

    if (action[0] == '\0')
        vmm_serve(serve_action);
    result = run_action(action);
    if (result == 0)
        vmm_puts("test-wx: allowed ok");
    return result;
}
