// Prewarming: KVM contexts built ahead of time for clones of a snapshot.
//
// A context that has never run has empty KVM page mappings; on the kvm_pvm
// host (shadow paging) the first run of a clone in it took about 400 us more
// than in a reused context, one shadow page fault per page touched. So each
// prewarmed context serves one empty message with every effect discarded:
// console output and the reply are dropped, the pages the guest wrote are
// copied back from the snapshot, and its user-mode vCPU state is restored.
// What remains is KVM's warm mappings.
#include <cstring>

#include "devices/hypercalls.h"
#include "engine/engine.h"
#include "kvm/exit.h"
#include "vmm_abi.h"

namespace vmm {

namespace {

constexpr int kWarmupMaxExits = 64;
constexpr uint64_t kWarmupBudgetNs = 20 * 1000 * 1000;

// Hypercall host of a warm-up run: nothing leaves the VM.
class WarmupHost : public HypercallHost {
public:
    void console_write(Machine &, const uint8_t *, size_t) override {}
    HypercallOutcome wait(Machine &, uint64_t, uint64_t, uint64_t, uint64_t) override {
        waited = true;
        return HypercallOutcome::kWait;
    }
    int64_t reply(Machine &, const uint8_t *, size_t) override { return 0; }
    bool waited = false;
};

// Runs the guest of `m` on an empty message until it waits again. Returns
// false if it did anything else (crash, exit, too long), in which case the
// caller restores the full vCPU state instead.
bool warm_up(Machine &m) {
    const WaitState &wait = m.snapshot->wait();
    if (!wait.in_wait || !write_hypercall_ret(*m.memory, wait.block, 0)) {
        return false;
    }
    WarmupHost host;
    const uint64_t deadline = monotonic_ns() + kWarmupBudgetNs;
    for (int exits = 0; exits < kWarmupMaxExits && monotonic_ns() < deadline; exits++) {
        if (m.kvm->run() != 0) {
            return false;
        }
        DecodedExit exit = decode_exit(m.kvm->run_state());
        if (exit.kind != ExitKind::kHypercall) {
            return false;
        }
        HypercallResult result = handle_hypercall(m, exit.value, host);
        if (result.outcome == HypercallOutcome::kWait) {
            return host.waited && m.kvm->complete_pending_io().ok();
        }
        if (result.outcome != HypercallOutcome::kResume) {
            return false;
        }
    }
    return false;
}

}  // namespace

Status Engine::prewarm_one(const std::shared_ptr<const Snapshot> &snapshot) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) {
            return Status::failure("ERR_VMM_CLOSED", "the VMM is closed");
        }
    }
    const std::shared_ptr<const MemorySource> &source = snapshot->memory();
    // A scratch machine record carries the memory and context through the
    // hypercall table; it never enters the engine's tables.
    Machine scratch(0, nullptr, snapshot, snapshot->ram_size(), std::string());
    scratch.memory = std::make_unique<GuestMemory>();
    Status status = scratch.memory->map(*source, snapshot->ram_size());
    if (status.ok()) status = KvmContext::create(*kvm_, &scratch.kvm, &contexts_);
    if (status.ok()) status = scratch.kvm->map_ram(scratch.memory->host(), snapshot->ram_size());
    if (status.ok()) status = snapshot->cpu().restore(scratch.kvm->vcpu_fd());
    if (!status.ok()) {
        return status;
    }

    PooledContext ctx;
    ctx.source = source;
    ctx.restored_from = snapshot;
    if (warm_up(scratch)) {
        PageBitmap written(snapshot->ram_size() / VMM_PAGE_SIZE);
        status = scratch.memory->written_pages(&written);
        if (status.ok()) status = scratch.memory->restore_pages(written, *source);
        if (status.ok()) status = snapshot->cpu().match_user_state(scratch.kvm->vcpu_fd(), &ctx.match);
        if (status.ok()) status = snapshot->cpu().restore_user_state(scratch.kvm->vcpu_fd(), ctx.match);
        if (status.ok()) status = scratch.kvm->set_regs(snapshot->cpu().regs);
        if (!status.ok()) {
            return status;
        }
    } else {
        // The guest did something a warm-up must not: start it cold.
        status = snapshot->cpu().restore(scratch.kvm->vcpu_fd());
        if (!status.ok()) {
            return status;
        }
        PageBitmap written(snapshot->ram_size() / VMM_PAGE_SIZE);
        status = scratch.memory->written_pages(&written);
        if (status.ok()) status = scratch.memory->restore_pages(written, *source);
        if (!status.ok()) {
            return status;
        }
    }
    // The boot page is written by every clone at start; a private copy now
    // saves that copy-on-write fault, which with many VMs resident is slow
    // because the kernel then calls every KVM VM's MMU notifier.
    auto *byte = reinterpret_cast<volatile uint8_t *>(scratch.memory->host() + VMM_BOOT_INFO_ADDR);
    *byte = *byte;
    // Both paths above leave the segment registers and XSAVE area equal to
    // the snapshot's.
    ctx.match.sregs = true;
    ctx.match.xsave = true;
    ctx.kvm = std::move(scratch.kvm);
    ctx.memory = std::move(scratch.memory);
    ctx.prewarmed = true;

    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
        return Status::failure("ERR_VMM_CLOSED", "the VMM is closed");
    }
    pool_.push_back(std::move(ctx));
    // A VM that found no free context can take this one.
    retry_context_waiter_locked();
    return Status::success();
}

}  // namespace vmm
