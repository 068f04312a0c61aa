#include "kvm/context.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kvm/uapi.h"
#include "kvm/x86_layout.h"

namespace vmm {

namespace {

// Retries an ioctl that a signal interrupted. KVM_CREATE_VM returns EINTR
// when a signal is pending while it registers its MMU notifier, which takes
// long with many VMs resident, and the engine's workers receive kick signals.
template <typename... Args>
int ioctl_retry(int fd, unsigned long request, Args... args) {
    int r;
    do {
        r = ioctl(fd, request, args...);
    } while (r < 0 && errno == EINTR);
    return r;
}

Status ioctl_error(const char *what, int err) {
    const char *code = (err == EMFILE || err == ENFILE) ? "ERR_RESOURCE_LIMIT" : "ERR_KVM_CREATE";
    return Status::from_errno(code, format("%s failed: %s", what, std::strerror(err)), err,
                              "ioctl");
}

}  // namespace

Status KvmContext::create(const KvmSystem &sys, std::unique_ptr<KvmContext> *out,
                          std::atomic<uint64_t> *owner_count) {
    std::unique_ptr<KvmContext> ctx(new KvmContext());
    if (owner_count != nullptr) {
        // Relaxed: a count for a cap, not ordering other memory.
        owner_count->fetch_add(1, std::memory_order_relaxed);
        ctx->owner_count_ = owner_count;
    }

    ctx->vm_fd_ = ioctl_retry(sys.fd(), KVM_CREATE_VM, 0);
    if (ctx->vm_fd_ < 0) {
        return ioctl_error("KVM_CREATE_VM", errno);
    }
    ctx->vcpu_fd_ = ioctl_retry(ctx->vm_fd_, KVM_CREATE_VCPU, 0);
    if (ctx->vcpu_fd_ < 0) {
        return ioctl_error("KVM_CREATE_VCPU", errno);
    }
    // KVM opens both descriptors without O_CLOEXEC; child processes must not
    // inherit them.
    fcntl(ctx->vm_fd_, F_SETFD, FD_CLOEXEC);
    fcntl(ctx->vcpu_fd_, F_SETFD, FD_CLOEXEC);

    ctx->run_size_ = sys.run_mmap_size();
    void *run = mmap(nullptr, ctx->run_size_, PROT_READ | PROT_WRITE, MAP_SHARED,
                     ctx->vcpu_fd_, 0);
    if (run == MAP_FAILED) {
        int err = errno;
        return Status::from_errno("ERR_KVM_CREATE",
                                  format("mmap of kvm_run failed: %s", std::strerror(err)), err,
                                  "mmap");
    }
    ctx->run_ = static_cast<kvm_run *>(run);

    int sync = ioctl(sys.fd(), KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
    ctx->sync_regs_ = sync > 0 && (sync & KVM_SYNC_X86_REGS) != 0;
    ctx->sync_sregs_ = sync > 0 && (sync & KVM_SYNC_X86_REGS) != 0 &&
                       (sync & KVM_SYNC_X86_SREGS) != 0;
    if (ioctl_retry(ctx->vcpu_fd_, uapi::kSetCpuid2, sys.cpuid()) < 0) {
        return ioctl_error("KVM_SET_CPUID2", errno);
    }
    *out = std::move(ctx);
    return Status::success();
}

KvmContext::~KvmContext() {
    if (owner_count_ != nullptr) {
        owner_count_->fetch_sub(1, std::memory_order_relaxed);
    }
    if (run_ != nullptr) {
        munmap(run_, run_size_);
    }
    if (vcpu_fd_ >= 0) {
        close(vcpu_fd_);
    }
    if (vm_fd_ >= 0) {
        close(vm_fd_);
    }
}

Status KvmContext::map_ram(void *host, uint64_t size) {
    kvm_userspace_memory_region region{};
    region.slot = 0;
    region.flags = 0;
    region.guest_phys_addr = 0;
    region.memory_size = size;
    region.userspace_addr = reinterpret_cast<uint64_t>(host);
    if (ioctl_retry(vm_fd_, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        return ioctl_error("KVM_SET_USER_MEMORY_REGION", errno);
    }
    ram_size_ = size;
    return Status::success();
}

Status KvmContext::complete_pending_io() {
    request_exit();
    int err = run();
    clear_exit_request();
    if (err != 0 && err != EINTR) {
        return ioctl_error("KVM_RUN", err);
    }
    return Status::success();
}

Status KvmContext::complete_pending_io_and_read(kvm_regs *regs, kvm_sregs *sregs) {
    if (!sync_sregs_) {
        Status status = complete_pending_io();
        if (status.ok()) status = get_regs(regs);
        if (status.ok()) status = get_sregs(sregs);
        return status;
    }
    run_->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
    Status status = complete_pending_io();
    run_->kvm_valid_regs = 0;
    if (!status.ok()) {
        return status;
    }
    *regs = run_->s.regs.regs;
    *sregs = run_->s.regs.sregs;
    return Status::success();
}

Status KvmContext::set_entry_state(uint64_t entry, uint64_t ram_size) {
    kvm_sregs sregs{};
    if (ioctl(vcpu_fd_, KVM_GET_SREGS, &sregs) < 0) {
        return ioctl_error("KVM_GET_SREGS", errno);
    }
    x86::initial_sregs(&sregs);
    if (ioctl(vcpu_fd_, KVM_SET_SREGS, &sregs) < 0) {
        return ioctl_error("KVM_SET_SREGS", errno);
    }
    kvm_regs regs{};
    x86::initial_regs(&regs, entry, ram_size);
    return set_regs(regs);
}

int KvmContext::run() {
    if (ioctl(vcpu_fd_, KVM_RUN, 0) < 0) {
        return errno;
    }
    return 0;
}

Status KvmContext::set_regs_fast(const kvm_regs &regs) {
    if (!sync_regs_) {
        return set_regs(regs);
    }
    run_->s.regs.regs = regs;
    run_->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
    return Status::success();
}

Status KvmContext::get_regs(kvm_regs *regs) const {
    if (ioctl(vcpu_fd_, KVM_GET_REGS, regs) < 0) {
        return ioctl_error("KVM_GET_REGS", errno);
    }
    return Status::success();
}

Status KvmContext::get_sregs(kvm_sregs *sregs) const {
    if (ioctl(vcpu_fd_, KVM_GET_SREGS, sregs) < 0) {
        return ioctl_error("KVM_GET_SREGS", errno);
    }
    return Status::success();
}

Status KvmContext::set_regs(const kvm_regs &regs) {
    if (ioctl(vcpu_fd_, KVM_SET_REGS, &regs) < 0) {
        return ioctl_error("KVM_SET_REGS", errno);
    }
    return Status::success();
}

}  // namespace vmm
