// Hibernation: a VM that waits long enough, or that the context cap evicts,
// gives its KVM context back. Its vCPU state and the pages that differ from
// its source go into the page store; a message wakes it in any free context.
#include <cstring>

#include "engine/engine.h"
#include "vmm_abi.h"

namespace vmm {

void Engine::lru_add_locked(const std::shared_ptr<Machine> &m) {
    if (!m->in_lru && m->kvm) {
        m->lru_it = idle_lru_.insert(idle_lru_.end(), m);
        m->in_lru = true;
    }
}

void Engine::lru_remove_locked(Machine &m) {
    if (m.in_lru) {
        idle_lru_.erase(m.lru_it);
        m.in_lru = false;
    }
}

bool Engine::evict_one() {
    std::shared_ptr<Machine> victim;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        while (!idle_lru_.empty()) {
            std::shared_ptr<Machine> candidate = idle_lru_.front();
            lru_remove_locked(*candidate);
            if (candidate->state == VmState::kWaiting && candidate->kvm &&
                candidate->inbox.empty()) {
                // Owned by this worker while it hibernates; kRunning keeps
                // every other path away, as for a VM on a worker.
                candidate->state = VmState::kRunning;
                victim = std::move(candidate);
                break;
            }
        }
    }
    if (!victim) {
        return false;
    }
    bool killed = false;
    Status status = hibernate(victim, &killed);
    if (!status.ok()) {
        finish(victim, ExitInfo::failure("hibernation failed: " + status.message));
    } else if (killed) {
        // A kill or destroy arrived while it hibernated.
        finish(victim, ExitInfo::killed());
    }
    return true;
}

Status Engine::hibernate(const std::shared_ptr<Machine> &ptr, bool *killed) {
    Machine &m = *ptr;
    *killed = false;
    Status status;
    VcpuState cpu;
    if (m.restored_from) {
        // A VM whose context last held its snapshot's full state, and which
        // has stayed in user mode since (restored_from is cleared on a
        // crash), can only have changed its user-mode state. Completing the
        // pending exit returns the registers too: two ioctls instead of nine.
        cpu = m.restored_from->cpu();
        status = m.kvm->complete_pending_io_and_read(&cpu.regs, &cpu.sregs);
        if (status.ok()) status = cpu.capture_xsave(m.kvm->vcpu_fd());
        m.io_pending = false;
    } else {
        if (m.io_pending) {
            status = m.kvm->complete_pending_io();
            m.io_pending = false;
        }
        if (status.ok()) status = cpu.capture(*kvm_, m.kvm->vcpu_fd());
    }
    if (!status.ok()) {
        return status;
    }
    PageBitmap written(m.ram_size / VMM_PAGE_SIZE);
    status = m.memory->written_pages(&written);
    if (!status.ok()) {
        return status;
    }

    // Pages: each written page is encoded against its source page, which
    // the context contains again once restore_pages() below has run.
    const MemorySource &source = *m.source;
    const PageBitmap ballooned = m.balloon.pages();
    StoredPages stored;
    uint8_t base[VMM_PAGE_SIZE];
    for (uint64_t page = 0; page < written.pages(); page++) {
        if (!written.test(page) || ballooned.test(page)) {
            continue;
        }
        const uint64_t offset = page * VMM_PAGE_SIZE;
        if (source.present.test(page) && offset < source.size) {
            if (pread(source.fd, base, VMM_PAGE_SIZE, static_cast<off_t>(source.offset + offset)) !=
                static_cast<ssize_t>(VMM_PAGE_SIZE)) {
                stored.release(page_table_);
                return Status::from_errno("ERR_OUT_OF_MEMORY", "reading a source page failed",
                                          errno, "pread");
            }
        } else {
            std::memset(base, 0, VMM_PAGE_SIZE);
        }
        stored.add(page_table_, page, base, m.memory->host() + offset);
    }

    // vCPU state against the state the VM started from.
    const VcpuState &start = m.snapshot ? m.snapshot->cpu() : *fresh_;
    std::vector<uint8_t> start_bytes = start.serialize();
    std::vector<uint8_t> now_bytes = cpu.serialize();
    if (start_bytes.size() != now_bytes.size()) {
        stored.release(page_table_);
        return Status::failure("ERR_KVM_STATE", "the vCPU state changed size while the VM ran");
    }
    m.cpu_runs = encode_runs(start_bytes.data(), now_bytes.data(), now_bytes.size());
    m.cpu_runs.shrink_to_fit();
    stored_bytes_.fetch_add(stored.bytes() + m.cpu_runs.capacity(), std::memory_order_relaxed);
    m.stored = std::move(stored);

    // The context goes back with the source's content, warm for the next VM.
    status = m.memory->restore_pages(written, source);
    PooledContext pooled;
    {
        // stats() reads m.memory under mutex_, so it moves under mutex_.
        std::lock_guard<std::mutex> lock(mutex_);
        pooled = PooledContext{std::move(m.kvm), std::move(m.memory), m.source,
                               m.restored_from, {}};
    }
    if (pooled.restored_from) {
        // The state just read is the context's state: compare it directly.
        const VcpuState &base = pooled.restored_from->cpu();
        pooled.match.sregs =
            std::memcmp(&cpu.sregs.cs, &base.sregs.cs, sizeof(kvm_segment) * 6) == 0;
        pooled.match.xsave = cpu.xsave == base.xsave;
    }
    m.dirty = PageBitmap();

    std::lock_guard<std::mutex> lock(mutex_);
    if (status.ok() && !stopping_) {
        pooled.pooled_ns = monotonic_ns();
        pool_.push_back(std::move(pooled));
    }
    retry_context_waiter_locked();
    // A context that failed its reset is freed with `pooled` here.
    m.has_stored_state = true;
    m.hibernate_requested = false;
    m.worker = -1;
    hibernations_++;
    if (m.kill_requested.load(std::memory_order_acquire)) {
        *killed = true;  // still owned by the caller, which ends it
        return Status::success();
    }
    m.state = VmState::kHibernated;
    if (!m.inbox.empty() || !m.snapshot_requests.empty() || m.balloon_wake) {
        // Work arrived while it hibernated: wake it again, delivering that
        // message once.
        make_runnable_locked(ptr);
    }
    return Status::success();
}

Status Engine::wake(Machine &m) {
    const uint64_t started = monotonic_ns();
    std::shared_ptr<const MemorySource> source = m.source;
    Status status = source->check_size();
    if (!status.ok()) {
        return status;
    }
    PooledContext ctx;
    status = acquire_context(m.ram_size, source, &ctx);
    if (!status.ok()) {
        return status;
    }
    const VcpuState &start = m.snapshot ? m.snapshot->cpu() : *fresh_;
    std::vector<uint8_t> bytes = start.serialize();
    VcpuState cpu;
    if (!apply_runs(m.cpu_runs, bytes.data(), bytes.size()) ||
        !cpu.deserialize(bytes.data(), bytes.size(), *kvm_).empty()) {
        return Status::failure("ERR_KVM_STATE", "the stored vCPU state is corrupt");
    }
    const bool warm = m.snapshot && ctx.restored_from == m.snapshot &&
                      std::memcmp(&cpu.sregs.cs, &m.snapshot->cpu().sregs.cs,
                                  sizeof(kvm_segment) * 6) == 0;
    if (warm) {
        // The context's full state is the snapshot's and its guest stayed in
        // user mode, like this VM: only user-mode state differs.
        // The XSAVE area is skipped only when both the context's and this
        // VM's equal the snapshot's.
        VcpuState::UserStateMatch match = ctx.match;
        match.xsave = ctx.match.xsave && cpu.xsave == m.snapshot->cpu().xsave;
        status = cpu.restore_user_state(ctx.kvm->vcpu_fd(), match);
        if (status.ok()) {
            status = ctx.kvm->set_regs_fast(cpu.regs);
        }
    } else {
        status = cpu.restore(ctx.kvm->vcpu_fd());
        ctx.restored_from = nullptr;
    }
    if (!status.ok()) {
        return status;
    }
    if (!m.stored.restore(page_table_, ctx.memory->host(), m.ram_size)) {
        return Status::failure("ERR_OUT_OF_MEMORY", "the stored pages are corrupt");
    }
    stored_bytes_.fetch_sub(m.stored.bytes() + m.cpu_runs.capacity(), std::memory_order_relaxed);
    m.stored.release(page_table_);
    m.cpu_runs.clear();
    m.cpu_runs.shrink_to_fit();
    m.dirty = PageBitmap(m.ram_size / VMM_PAGE_SIZE);

    std::lock_guard<std::mutex> lock(mutex_);
    m.memory = std::move(ctx.memory);
    m.kvm = std::move(ctx.kvm);
    m.restored_from = ctx.restored_from;
    m.io_pending = false;
    m.has_stored_state = false;
    if (m.kill_requested.load(std::memory_order_acquire)) {
        m.kvm->request_exit();
    }
    wakes_++;
    uint64_t us = (monotonic_ns() - started) / 1000;
    int bucket = 0;
    while (bucket < 23 && us >= (1ull << bucket)) {
        bucket++;
    }
    wake_histogram_[bucket]++;
    return Status::success();
}

}  // namespace vmm
