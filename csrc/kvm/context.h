// One KVM virtual machine with one vCPU and one memory slot: the unit the
// engine gives each running guest and pools between guests.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <atomic>
#include <memory>

#include "common/status.h"
#include "kvm/system.h"

namespace vmm {

class KvmContext {
public:
    // Creates the VM and its vCPU, maps kvm_run and installs the supported
    // CPUID table. Codes: ERR_KVM_CREATE (errno and syscall set),
    // ERR_RESOURCE_LIMIT when the process is out of file descriptors.
    // `owner_count`, if given, counts this context while it lives; an
    // engine uses it to cap its own contexts.
    static Status create(const KvmSystem &sys, std::unique_ptr<KvmContext> *out,
                         std::atomic<uint64_t> *owner_count = nullptr);

    ~KvmContext();
    KvmContext(const KvmContext &) = delete;
    KvmContext &operator=(const KvmContext &) = delete;

    // Registers [host, host + size) as guest physical [0, size) in slot 0.
    Status map_ram(void *host, uint64_t size);

    // Completes an MMIO or port I/O exit inside KVM without entering the
    // guest (KVM_RUN with immediate_exit), so the registers read afterwards
    // are past the instruction that exited. KVM's API documentation requires
    // this before saving vCPU state after such an exit.
    Status complete_pending_io();

    // complete_pending_io() that also reads the general and special
    // registers through kvm_run's synced register area where the host has
    // KVM_CAP_SYNC_REGS, saving two ioctls; each vCPU ioctl loads the vCPU,
    // which on the kvm_pvm host reads MSRs and was the largest cost of a
    // hibernation (perf, bench:density). Falls back to the two ioctls.
    Status complete_pending_io_and_read(kvm_regs *regs, kvm_sregs *sregs);

    int vcpu_fd() const { return vcpu_fd_; }
    uint64_t ram_size() const { return ram_size_; }

    // Puts the vCPU in 64-bit user mode at `entry` (see x86_layout.h).
    Status set_entry_state(uint64_t entry, uint64_t ram_size);

    // Runs the vCPU until the next exit. Returns 0 or the errno of KVM_RUN
    // (EINTR when a signal or immediate_exit stopped it).
    int run();

    const kvm_run &run_state() const { return *run_; }

    // Makes the current or next KVM_RUN return EINTR. Called from any thread;
    // the worker clears it with clear_exit_request() after it has seen the
    // request. Relaxed ordering is enough for the byte itself, because the
    // caller publishes the reason for the request with its own atomics first.
    void request_exit() { __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_RELEASE); }
    void clear_exit_request() { __atomic_store_n(&run_->immediate_exit, 0, __ATOMIC_RELAXED); }

    Status get_regs(kvm_regs *regs) const;
    Status get_sregs(kvm_sregs *sregs) const;
    Status set_regs(const kvm_regs &regs);
    // Sets the general registers through kvm_run's synced register area,
    // applied by the next KVM_RUN without an ioctl of its own, where the
    // host has KVM_CAP_SYNC_REGS; otherwise with KVM_SET_REGS.
    Status set_regs_fast(const kvm_regs &regs);

private:
    KvmContext() = default;
    std::atomic<uint64_t> *owner_count_ = nullptr;

    int vm_fd_ = -1;
    int vcpu_fd_ = -1;
    kvm_run *run_ = nullptr;
    size_t run_size_ = 0;
    uint64_t ram_size_ = 0;
    bool sync_regs_ = false;
    bool sync_sregs_ = false;
};

}  // namespace vmm
