#include "kvm/system.h"

#include "kvm/uapi.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace vmm {

namespace {

constexpr int kKvmApiVersion = 12;

struct RequiredCap {
    int cap;
    const char *name;
};

// Capabilities the engine depends on. KVM_CAP_USER_MEMORY for the memory
// slots, IMMEDIATE_EXIT for stopping a vCPU without races, EXT_CPUID for
// KVM_GET_SUPPORTED_CPUID.
constexpr RequiredCap kRequiredCaps[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
};

Status open_error(int err) {
    if (err == ENOENT || err == ENXIO || err == ENODEV) {
        return Status::from_errno(
            "ERR_KVM_UNAVAILABLE",
            format("/dev/kvm is not available (%s): load the kvm_intel or kvm_amd module, "
                   "or run on a host or VM with hardware virtualization enabled",
                   std::strerror(err)),
            err, "open");
    }
    if (err == EACCES || err == EPERM) {
        return Status::from_errno(
            "ERR_KVM_PERMISSION",
            format("permission denied opening /dev/kvm (%s): add this user to the kvm group "
                   "(usermod -aG kvm $USER, then log in again) or grant read and write access",
                   std::strerror(err)),
            err, "open");
    }
    return Status::from_errno("ERR_KVM_UNAVAILABLE",
                              format("failed to open /dev/kvm: %s", std::strerror(err)), err,
                              "open");
}

}  // namespace

Status KvmSystem::open(std::unique_ptr<KvmSystem> *out) {
    std::unique_ptr<KvmSystem> sys(new KvmSystem());
    sys->fd_ = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (sys->fd_ < 0) {
        return open_error(errno);
    }

    int version = ioctl(sys->fd_, KVM_GET_API_VERSION, 0);
    if (version != kKvmApiVersion) {
        return Status::failure("ERR_KVM_UNAVAILABLE",
                               format("/dev/kvm reports API version %d, expected %d", version,
                                      kKvmApiVersion));
    }

    for (const RequiredCap &req : kRequiredCaps) {
        if (ioctl(sys->fd_, KVM_CHECK_EXTENSION, req.cap) <= 0) {
            return Status::failure(
                "ERR_KVM_CAPABILITY",
                format("/dev/kvm lacks %s, which the engine requires; a newer host kernel "
                       "provides it",
                       req.name));
        }
    }

    int mmap_size = ioctl(sys->fd_, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < static_cast<int>(sizeof(kvm_run))) {
        int err = mmap_size < 0 ? errno : EINVAL;
        return Status::from_errno("ERR_KVM_UNAVAILABLE",
                                  format("KVM_GET_VCPU_MMAP_SIZE returned %d", mmap_size), err,
                                  "ioctl");
    }
    sys->run_mmap_size_ = static_cast<size_t>(mmap_size);
    sys->max_memslots_ = ioctl(sys->fd_, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
    int xsave2 = ioctl(sys->fd_, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    if (xsave2 > 4096) {
        sys->xsave_size_ = static_cast<size_t>(xsave2);
    }
    Status status = sys->load_msr_list();
    if (!status.ok()) {
        return status;
    }

    // KVM_GET_SUPPORTED_CPUID fails with E2BIG until the table is large enough.
    for (uint32_t entries = 64; entries <= 4096; entries *= 2) {
        sys->cpuid_.assign(sizeof(uapi::CpuidHeader) + entries * sizeof(kvm_cpuid_entry2), 0);
        auto *table = reinterpret_cast<uapi::CpuidHeader *>(sys->cpuid_.data());
        table->nent = entries;
        if (ioctl(sys->fd_, uapi::kGetSupportedCpuid, table) == 0) {
            *out = std::move(sys);
            return Status::success();
        }
        if (errno != E2BIG) {
            return Status::from_errno("ERR_KVM_CAPABILITY",
                                      format("KVM_GET_SUPPORTED_CPUID failed: %s",
                                             std::strerror(errno)),
                                      errno, "ioctl");
        }
    }
    return Status::failure("ERR_KVM_CAPABILITY",
                           "KVM_GET_SUPPORTED_CPUID needs more than 4096 entries");
}

Status KvmSystem::load_msr_list() {
    std::vector<uint8_t> buf(sizeof(uapi::MsrListHeader) + 1024 * sizeof(uint32_t));
    auto *header = reinterpret_cast<uapi::MsrListHeader *>(buf.data());
    header->nmsrs = 1024;
    if (ioctl(fd_, uapi::kGetMsrIndexList, buf.data()) < 0) {
        return Status::from_errno("ERR_KVM_CAPABILITY",
                                  format("KVM_GET_MSR_INDEX_LIST failed: %s", std::strerror(errno)),
                                  errno, "ioctl");
    }
    const auto *indices = reinterpret_cast<const uint32_t *>(buf.data() + sizeof(*header));
    // IA32_TSC, SYSENTER_CS/ESP/EIP, STAR, LSTAR, CSTAR, SFMASK,
    // KERNEL_GS_BASE, TSC_AUX, PAT. FS and GS base travel in the segment
    // registers, EFER in the special registers. No TSC deadline: the engine
    // creates no in-kernel local APIC.
    const uint32_t wanted[] = {0x10,       0x174,      0x175,      0x176,
                               0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,
                               0xC0000102, 0xC0000103, 0x277};
    for (uint32_t msr : wanted) {
        for (uint32_t i = 0; i < header->nmsrs && i < 1024; i++) {
            if (indices[i] == msr) {
                saved_msrs_.push_back(msr);
                break;
            }
        }
    }
    return Status::success();
}

KvmSystem::~KvmSystem() {
    if (fd_ >= 0) {
        close(fd_);
    }
}

}  // namespace vmm
