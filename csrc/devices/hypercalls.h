// The hypercall table: decodes a guest's hypercall block, checks every
// address and length in it, and carries the call out.
#pragma once

#include <cstdint>
#include <string>

#include "engine/machine.h"

namespace vmm {

enum class HypercallOutcome {
    kResume,  // ret is written; the vCPU continues
    kWait,    // the VM blocks in VMM_HC_WAIT until a message or its deadline
    kExit,    // the guest asked to exit with `exit_code`
    kFault,   // the block itself is invalid; the VM ends with reason "fault"
};

struct HypercallResult {
    HypercallOutcome outcome = HypercallOutcome::kResume;
    int exit_code = 0;
    std::string message;
};

// Engine services the hypercalls use; the engine owns the mailbox and events.
class HypercallHost {
public:
    virtual ~HypercallHost() = default;
    virtual void console_write(Machine &m, const uint8_t *data, size_t len) = 0;
    // Delivers the next message into the checked buffer [buf, buf + cap) or
    // parks the VM until one arrives or `deadline` (CLOCK_MONOTONIC ns, 0 =
    // none) passes. Returns kResume when `ret` in the block has been written.
    virtual HypercallOutcome wait(Machine &m, uint64_t block_gpa, uint64_t buf, uint64_t cap,
                                  uint64_t deadline) = 0;
    // Returns 0 or a negative VMM_E* value.
    virtual int64_t reply(Machine &m, const uint8_t *data, size_t len) = 0;
};

// Handles the hypercall whose block address the guest stored to the doorbell.
// The VM's memory is mapped and its vCPU is stopped.
HypercallResult handle_hypercall(Machine &m, uint64_t block_gpa, HypercallHost &host);

// Writes `ret` into the block at `block_gpa`; false if the block is invalid.
bool write_hypercall_ret(GuestMemory &memory, uint64_t block_gpa, int64_t ret);

}  // namespace vmm
