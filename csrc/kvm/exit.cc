#include "kvm/exit.h"

#include <cstdio>
#include <cstring>

#include "kvm/x86_layout.h"
#include "vmm_abi.h"

namespace vmm {

DecodedExit decode_exit(const kvm_run &run) {
    DecodedExit out;
    out.reason = run.exit_reason;
    switch (run.exit_reason) {
    case KVM_EXIT_MMIO: {
        out.address = run.mmio.phys_addr;
        out.size = run.mmio.len;
        out.is_write = run.mmio.is_write != 0;
        uint32_t n = out.size <= sizeof(run.mmio.data) ? out.size : sizeof(run.mmio.data);
        std::memcpy(&out.value, run.mmio.data, n);
        bool doorbell = out.address == VMM_DOORBELL_ADDR && out.is_write && out.size == 8;
        out.kind = doorbell ? ExitKind::kHypercall : ExitKind::kBadMmio;
        return out;
    }
    case KVM_EXIT_IO: {
        out.address = run.io.port;
        out.size = run.io.size;
        out.is_write = run.io.direction == KVM_EXIT_IO_OUT;
        bool stub = out.address == x86::kStubPort && out.is_write && out.size == 1 &&
                    run.io.count == 1;
        out.kind = stub ? ExitKind::kException : ExitKind::kBadIo;
        return out;
    }
    case KVM_EXIT_HLT:
        out.kind = ExitKind::kHalt;
        return out;
    case KVM_EXIT_SHUTDOWN:
        out.kind = ExitKind::kShutdown;
        return out;
    case KVM_EXIT_INTERNAL_ERROR:
        out.kind = ExitKind::kInternalError;
        out.value = run.internal.suberror;
        return out;
    case KVM_EXIT_FAIL_ENTRY:
        out.kind = ExitKind::kFailEntry;
        out.value = run.fail_entry.hardware_entry_failure_reason;
        return out;
    case KVM_EXIT_INTR:
        out.kind = ExitKind::kInterrupted;
        return out;
    default:
        out.kind = ExitKind::kUnknown;
        return out;
    }
}

const char *exit_reason_name(uint32_t reason) {
    switch (reason) {
    case KVM_EXIT_UNKNOWN: return "KVM_EXIT_UNKNOWN";
    case KVM_EXIT_EXCEPTION: return "KVM_EXIT_EXCEPTION";
    case KVM_EXIT_IO: return "KVM_EXIT_IO";
    case KVM_EXIT_HYPERCALL: return "KVM_EXIT_HYPERCALL";
    case KVM_EXIT_DEBUG: return "KVM_EXIT_DEBUG";
    case KVM_EXIT_HLT: return "KVM_EXIT_HLT";
    case KVM_EXIT_MMIO: return "KVM_EXIT_MMIO";
    case KVM_EXIT_IRQ_WINDOW_OPEN: return "KVM_EXIT_IRQ_WINDOW_OPEN";
    case KVM_EXIT_SHUTDOWN: return "KVM_EXIT_SHUTDOWN";
    case KVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY";
    case KVM_EXIT_INTR: return "KVM_EXIT_INTR";
    case KVM_EXIT_SET_TPR: return "KVM_EXIT_SET_TPR";
    case KVM_EXIT_TPR_ACCESS: return "KVM_EXIT_TPR_ACCESS";
    case KVM_EXIT_NMI: return "KVM_EXIT_NMI";
    case KVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR";
    case KVM_EXIT_SYSTEM_EVENT: return "KVM_EXIT_SYSTEM_EVENT";
    case KVM_EXIT_X86_RDMSR: return "KVM_EXIT_X86_RDMSR";
    case KVM_EXIT_X86_WRMSR: return "KVM_EXIT_X86_WRMSR";
    default: {
        static thread_local char buf[32];
        std::snprintf(buf, sizeof(buf), "KVM_EXIT_%u", reason);
        return buf;
    }
    }
}

const char *exit_kind_name(ExitKind kind) {
    switch (kind) {
    case ExitKind::kHypercall: return "hypercall";
    case ExitKind::kException: return "exception";
    case ExitKind::kBadMmio: return "bad-mmio";
    case ExitKind::kBadIo: return "bad-io";
    case ExitKind::kHalt: return "halt";
    case ExitKind::kShutdown: return "shutdown";
    case ExitKind::kInternalError: return "internal-error";
    case ExitKind::kFailEntry: return "fail-entry";
    case ExitKind::kInterrupted: return "interrupted";
    case ExitKind::kUnknown: return "unknown";
    }
    return "unknown";
}

}  // namespace vmm
