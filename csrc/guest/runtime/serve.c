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

    /* Each pass sends the previous reply and receives the next request in
     * one hypercall; the first pass has no reply to send. */
    int64_t reply_len = 0;

    for (;;) {
        int64_t len = vmm_reply_wait(reply, (size_t)reply_len, request, VMM_MSG_MAX, 0);

        /* The host changed the balloon target. The reply, if any, went out
         * before the wait began, so none is pending now. */
        if (len == -(int64_t)VMM_EINTR) {
            reply_len = 0;
            vmm_balloon_update();
            continue;
        }

        /* With a VMM_MSG_MAX buffer and no deadline, the only errors come
         * from bad buffers, which retrying cannot fix. */
        if (len < 0) {
            vmm_printf("vmm_serve: reply and wait failed with error %lld\n", (long long)len);
            vmm_exit(1);
        }

        reply_len = handler(request, (size_t)len, reply, VMM_MSG_MAX);
        if (reply_len < 0 || reply_len > (int64_t)VMM_MSG_MAX)
            reply_len = 0;
    }
}
