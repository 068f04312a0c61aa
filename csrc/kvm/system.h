// The /dev/kvm system handle: opened once per process and shared by every VM.
#pragma once

#include <linux/kvm.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "common/status.h"

namespace vmm {

class KvmSystem {
public:
    // Opens /dev/kvm, checks the API version and every capability the engine
    // uses, and reads the supported CPUID table. Codes: ERR_KVM_UNAVAILABLE,
    // ERR_KVM_PERMISSION, ERR_KVM_CAPABILITY.
    static Status open(std::unique_ptr<KvmSystem> *out);

    ~KvmSystem();
    KvmSystem(const KvmSystem &) = delete;
    KvmSystem &operator=(const KvmSystem &) = delete;

    int fd() const { return fd_; }
    size_t run_mmap_size() const { return run_mmap_size_; }
    // CPUID table from KVM_GET_SUPPORTED_CPUID in the layout KVM_SET_CPUID2
    // takes: a uapi::CpuidHeader followed by its entries.
    const void *cpuid() const { return cpuid_.data(); }
    int max_memslots() const { return max_memslots_; }
    // Bytes of the KVM_GET_XSAVE2 area (KVM_CAP_XSAVE2, at least 4096).
    size_t xsave_size() const { return xsave_size_; }
    // MSRs a snapshot saves and restores: the ones a guest or its stubs can
    // change that this host's KVM lists, IA32_TSC first.
    const std::vector<uint32_t> &saved_msrs() const { return saved_msrs_; }

private:
    KvmSystem() = default;
    Status load_msr_list();

    int fd_ = -1;
    size_t run_mmap_size_ = 0;
    size_t xsave_size_ = 4096;
    std::vector<uint32_t> saved_msrs_;
    int max_memslots_ = 0;
    std::vector<unsigned char> cpuid_;
};

}  // namespace vmm
