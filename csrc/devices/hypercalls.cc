#include "devices/hypercalls.h"

#include <sys/random.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <ctime>

#include "vmm_abi.h"

namespace vmm {

namespace {

uint64_t clock_ns(clockid_t clock) {
    timespec ts{};
    clock_gettime(clock, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

int64_t do_random(GuestMemory &memory, uint64_t buf, uint64_t len) {
    if (len > VMM_RANDOM_MAX) {
        return -VMM_EINVAL;
    }
    uint8_t *dst = memory.user_range(buf, len);
    if (dst == nullptr) {
        return -VMM_EFAULT;
    }
    uint8_t bytes[VMM_RANDOM_MAX];
    size_t filled = 0;
    while (filled < len) {
        ssize_t n = getrandom(bytes + filled, len - filled, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -VMM_EINVAL;
        }
        filled += static_cast<size_t>(n);
    }
    // dst covers [buf, buf + len), checked by user_range above.
    std::memcpy(dst, bytes, len);
    return static_cast<int64_t>(len);
}

}  // namespace

bool write_hypercall_ret(GuestMemory &memory, uint64_t block_gpa, int64_t ret) {
    uint64_t gpa;
    if (__builtin_add_overflow(block_gpa, offsetof(vmm_hypercall, ret), &gpa)) {
        return false;
    }
    uint8_t *dst = memory.user_range(gpa, sizeof(ret));
    if (dst == nullptr) {
        return false;
    }
    std::memcpy(dst, &ret, sizeof(ret));
    return true;
}

HypercallResult handle_hypercall(Machine &m, uint64_t block_gpa, HypercallHost &host) {
    HypercallResult result;
    GuestMemory &memory = *m.memory;
    const uint8_t *src = memory.user_range(block_gpa, sizeof(vmm_hypercall));
    if (src == nullptr || block_gpa % 8 != 0) {
        result.outcome = HypercallOutcome::kFault;
        result.message = format("hypercall block address 0x%llx is not an 8-byte aligned "
                                "address in guest RAM above the reserved area",
                                static_cast<unsigned long long>(block_gpa));
        return result;
    }
    // A copy, so the checks below apply to the values that are used.
    vmm_hypercall call;
    std::memcpy(&call, src, sizeof(call));
    m.counters.hypercalls.fetch_add(1, std::memory_order_relaxed);

    int64_t ret = 0;
    switch (call.nr) {
    case VMM_HC_CONSOLE_WRITE: {
        const uint8_t *data = memory.user_range(call.args[0], call.args[1]);
        if (data == nullptr) {
            ret = -VMM_EFAULT;
            break;
        }
        host.console_write(m, data, call.args[1]);
        ret = static_cast<int64_t>(call.args[1]);
        break;
    }
    case VMM_HC_EXIT:
        result.outcome = HypercallOutcome::kExit;
        result.exit_code = static_cast<int>(call.args[0] & 0xFF);
        return result;
    case VMM_HC_WAIT:
        if (memory.user_range(call.args[0], call.args[1]) == nullptr) {
            ret = -VMM_EFAULT;
            break;
        }
        result.outcome = host.wait(m, block_gpa, call.args[0], call.args[1], call.args[2]);
        return result;
    case VMM_HC_REPLY_WAIT: {
        if (call.args[1] > VMM_MSG_MAX) {
            ret = -VMM_EMSGSIZE;
            break;
        }
        const uint8_t *reply = memory.user_range(call.args[0], call.args[1]);
        if (reply == nullptr || memory.user_range(call.args[2], call.args[3]) == nullptr) {
            ret = -VMM_EFAULT;
            break;
        }
        // The first call of a serve loop has nothing to reply to; reply()
        // returns -VMM_EINVAL then, which is not an error here.
        host.reply(m, reply, call.args[1]);
        result.outcome = host.wait(m, block_gpa, call.args[2], call.args[3], call.args[4]);
        return result;
    }
    case VMM_HC_REPLY: {
        if (call.args[1] > VMM_MSG_MAX) {
            ret = -VMM_EMSGSIZE;
            break;
        }
        const uint8_t *data = memory.user_range(call.args[0], call.args[1]);
        if (data == nullptr) {
            ret = -VMM_EFAULT;
            break;
        }
        ret = host.reply(m, data, call.args[1]);
        break;
    }
    case VMM_HC_CLOCK:
        if (call.args[0] == VMM_CLOCK_MONOTONIC) {
            ret = static_cast<int64_t>(clock_ns(CLOCK_MONOTONIC));
        } else if (call.args[0] == VMM_CLOCK_REALTIME) {
            ret = static_cast<int64_t>(clock_ns(CLOCK_REALTIME));
        } else {
            ret = -VMM_EINVAL;
        }
        break;
    case VMM_HC_RANDOM:
        ret = do_random(memory, call.args[0], call.args[1]);
        break;
    case VMM_HC_BALLOON_TARGET:
        ret = static_cast<int64_t>(m.balloon.target());
        break;
    case VMM_HC_BALLOON_INFLATE:
    case VMM_HC_BALLOON_DEFLATE: {
        const uint64_t count = call.args[1];
        if (count > VMM_BALLOON_BATCH) {
            ret = -VMM_EINVAL;
            break;
        }
        // count <= VMM_BALLOON_BATCH, so count * 8 cannot overflow.
        const uint8_t *list = memory.user_range(call.args[0], count * 8);
        if (list == nullptr) {
            ret = -VMM_EFAULT;
            break;
        }
        uint64_t frames[VMM_BALLOON_BATCH];
        std::memcpy(frames, list, count * 8);
        uint64_t done = call.nr == VMM_HC_BALLOON_INFLATE ? m.balloon.inflate(memory, frames, count)
                                                          : m.balloon.deflate(frames, count);
        ret = static_cast<int64_t>(done);
        break;
    }
    case VMM_HC_FREE_RANGE:
        if (memory.user_range(call.args[0], call.args[1]) == nullptr) {
            ret = -VMM_EFAULT;
            break;
        }
        ret = static_cast<int64_t>(m.balloon.report_free(memory, call.args[0], call.args[1]));
        break;
    default:
        ret = -VMM_ENOSYS;
        break;
    }
    if (ret < 0) {
        m.counters.hypercall_errors.fetch_add(1, std::memory_order_relaxed);
    }
    write_hypercall_ret(memory, block_gpa, ret);
    return result;
}

}  // namespace vmm
