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

private:
    KvmSystem() = default;

    int fd_ = -1;
    size_t run_mmap_size_ = 0;
    int max_memslots_ = 0;
    std::vector<unsigned char> cpuid_;
};

}  // namespace vmm
