// Decoding of KVM_RUN exits into the closed set of events the engine handles.
// decode_exit is pure so that tests can feed it made-up kvm_run contents.
#pragma once

#include <linux/kvm.h>

#include <cstdint>

namespace vmm {

enum class ExitKind {
    kHypercall,      // 8-byte MMIO write to the doorbell; value = block address
    kException,      // port write from an exception stub
    kBadMmio,        // any other MMIO access (unmapped guest physical address)
    kBadIo,          // port I/O other than the stub port
    kHalt,           // HLT; guest user code cannot execute it, so it is a crash
    kShutdown,       // triple fault
    kInternalError,  // KVM_EXIT_INTERNAL_ERROR (e.g. emulation failure)
    kFailEntry,      // KVM_EXIT_FAIL_ENTRY: invalid vCPU state
    kInterrupted,    // KVM_EXIT_INTR: a signal or immediate_exit stopped KVM_RUN
    kUnknown,        // any other exit reason
};

struct DecodedExit {
    ExitKind kind = ExitKind::kUnknown;
    uint32_t reason = 0;   // raw kvm_run::exit_reason
    uint64_t address = 0;  // MMIO guest physical address or I/O port
    uint64_t value = 0;    // data written (MMIO/IO) or suberror / hardware reason
    uint32_t size = 0;     // access size in bytes
    bool is_write = false;
};

// Decodes `run` after KVM_RUN returned 0. Reads only the union member that
// matches exit_reason and bounds every size it copies.
DecodedExit decode_exit(const kvm_run &run);

// Name of a KVM exit reason ("KVM_EXIT_MMIO"), or "KVM_EXIT_<number>".
const char *exit_reason_name(uint32_t reason);

const char *exit_kind_name(ExitKind kind);

}  // namespace vmm
