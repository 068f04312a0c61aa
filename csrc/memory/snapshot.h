// An immutable snapshot of a VM: its memory (a sealed memfd or a mapped
// snapshot file, shared by every clone) and its vCPU state.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "kvm/vcpu_state.h"
#include "memory/guest_memory.h"
#include "memory/source.h"

namespace vmm {

// A hypercall the guest was blocked in when the snapshot was taken. A clone
// resumes inside it: the next message completes it.
struct WaitState {
    bool in_wait = false;
    uint64_t block = 0;
    uint64_t buf = 0;
    uint64_t cap = 0;
    uint64_t deadline_remaining_ns = 0;  // 0 = no deadline
};

// The guest page frames [first, first + count). Snapshot files and the
// content hash store a balloon as ascending runs that neither overlap nor
// touch, so every balloon has one encoding.
struct FrameRun {
    uint64_t first;
    uint64_t count;
};
static_assert(sizeof(FrameRun) == 16, "a run is two uint64 values in files");

// Returns the set pages of `pages` as ascending runs that neither overlap
// nor touch.
std::vector<FrameRun> frame_runs(const PageBitmap &pages);

class Snapshot {
public:
    // Builds a snapshot of memory mapped at `memory`, whose base is `base`
    // (the source the VM mapped) and whose written pages are `dirty`.
    // The vCPU must be stopped. Codes: ERR_OUT_OF_MEMORY, ERR_RESOURCE_LIMIT.
    // Pages in `balloon` are left out: the guest handed them back, so
    // their content does not matter, and the clone inherits the balloon.
    static Status capture(const GuestMemory &memory, std::shared_ptr<const MemorySource> base,
                          const PageBitmap &dirty, VcpuState cpu, WaitState wait,
                          std::shared_ptr<const Snapshot> parent, PageBitmap balloon,
                          uint64_t balloon_target, std::shared_ptr<const Snapshot> *out);

    // Wraps memory and state read from a snapshot file. `balloon` has one
    // bit per page of RAM, and its pages read as zero in `memory`.
    Snapshot(std::shared_ptr<const MemorySource> memory, VcpuState cpu, WaitState wait,
             std::shared_ptr<const Snapshot> parent, PageBitmap diff, PageBitmap balloon,
             uint64_t balloon_target);

    const std::shared_ptr<const MemorySource> &memory() const { return memory_; }
    const VcpuState &cpu() const { return cpu_; }
    const WaitState &wait() const { return wait_; }
    uint64_t ram_size() const { return memory_->ram_size; }
    // The snapshot this one's VM was cloned from, or null.
    const std::shared_ptr<const Snapshot> &parent() const { return parent_; }
    // Pages that differ from the parent's memory (every present page when
    // there is no parent). A diff snapshot file stores only these.
    const PageBitmap &diff() const { return diff_; }

    // Pages the guest had handed back, and the balloon target in pages, when
    // it was captured. A clone inherits both, and snapshot files store them.
    const PageBitmap &balloon_pages() const { return balloon_; }
    uint64_t balloon_target() const { return balloon_target_; }

    // SHA-256 over the vCPU state, the wait state, every present page with
    // its page number, and the balloon. Computed on first use. A child file
    // names its parent by this hash.
    const std::array<uint8_t, 32> &content_hash() const;

private:
    std::shared_ptr<const MemorySource> memory_;
    VcpuState cpu_;
    WaitState wait_;
    std::shared_ptr<const Snapshot> parent_;
    PageBitmap diff_;
    PageBitmap balloon_;
    uint64_t balloon_target_ = 0;
    mutable std::once_flag hash_once_;
    mutable std::array<uint8_t, 32> hash_{};
};

// Creates an empty sealed-to-be memfd of `size` bytes. Codes: ERR_OUT_OF_MEMORY,
// ERR_RESOURCE_LIMIT.
Status create_memfd(const char *name, uint64_t size, int *out);

// Seals a memfd against any change in size or content.
Status seal_memfd(int fd);

}  // namespace vmm
