// The whole architectural state of a vCPU, read from one KVM VM and written
// to another that maps the same memory. Snapshots, clones and pooled
// contexts use it.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace vmm {

class KvmSystem;

struct VcpuState {
    kvm_regs regs{};
    kvm_sregs sregs{};
    std::vector<uint8_t> xsave;  // KVM_GET_XSAVE2 layout, KvmSystem::xsave_size() bytes
    kvm_xcrs xcrs{};
    std::vector<kvm_msr_entry> msrs;  // KvmSystem::saved_msrs(), in that order
    kvm_debugregs debugregs{};
    kvm_vcpu_events events{};
    kvm_mp_state mp_state{};

    // Reads every part from `vcpu_fd`. A short KVM_GET_MSRS count is an
    // error naming the MSR that failed. Code: ERR_KVM_STATE.
    Status capture(const KvmSystem &sys, int vcpu_fd);


    // Reads only the XSAVE area; the caller has set regs and sregs.
    Status capture_xsave(int vcpu_fd);

    // Writes every part to `vcpu_fd`, TSC first among the MSRs so that
    // anything computed from it uses the restored value. A short
    // KVM_SET_MSRS count is an error naming the MSR. Code: ERR_KVM_STATE.
    Status restore(int vcpu_fd) const;

    // Parts of a vCPU's user-mode state that still equal this VcpuState.
    struct UserStateMatch {
        bool sregs = false;  // the segment registers (user mode can load selectors)
        bool xsave = false;  // FPU, SSE and extended state
    };

    // Compares the vCPU's segment registers and XSAVE area with this state.
    // Run when a context is pooled, off the path of the next start.
    Status match_user_state(int vcpu_fd, UserStateMatch *out) const;

    // Writes only what user-mode code can have changed, given `match`: the
    // segment registers and the XSAVE area where they differ. The general
    // registers are left to the caller. For a vCPU whose full state was last
    // set from this same VcpuState and whose guest stayed in user mode since,
    // the result equals restore(). Skipping KVM_SET_SREGS matters because it
    // resets KVM's MMU, after which every page the guest touches faults again.
    Status restore_user_state(int vcpu_fd, const UserStateMatch &match) const;

    // Binary form used in snapshot files: fixed-size parts, then the xsave
    // area and the MSR entries, each with its length.
    std::vector<uint8_t> serialize() const;
    // Parses serialize()'s output; returns a reason on failure.
    std::string deserialize(const uint8_t *data, size_t size, const KvmSystem &sys);
};

}  // namespace vmm
