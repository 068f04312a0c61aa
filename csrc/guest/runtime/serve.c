/*
 * Request loop for guests that reply to host messages.
 */
#include "vmm_guest.h"

_Noreturn void vmm_serve(vmm_handler handler)
{
    uint8_t *request = vmm_malloc(VMM_MSG_MAX);
    uint8_t *reply = vmm_malloc(VMM_MSG_MAX);

    if (request == NULL || reply == NULL) {
        vmm_printf("vmm_serve: cannot allocate two %u-byte message buffers, the heap is too small\n",
                   VMM_MSG_MAX);
        vmm_exit(1);
    }

    for (;;) {
        int64_t len = vmm_wait(request, VMM_MSG_MAX, 0);

        /* With a VMM_MSG_MAX buffer and no deadline, wait has no error to
         * retry: a message that does not fit stays queued and would fail
         * again. */
        if (len < 0) {
            vmm_printf("vmm_serve: wait failed with error %lld\n", (long long)len);
            vmm_exit(1);
        }

        int64_t reply_len = handler(request, (size_t)len, reply, VMM_MSG_MAX);

        if (reply_len < 0 || reply_len > (int64_t)VMM_MSG_MAX)
            reply_len = 0;

        int64_t ret = vmm_reply(reply, (size_t)reply_len);

        if (ret < 0)
            vmm_printf("vmm_serve: reply failed with error %lld\n", (long long)ret);
    }
}
