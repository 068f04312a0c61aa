// Layout-correct replacements for the KVM structures that end in a flexible
// array member.
//
// linux/kvm.h declares those arrays with __DECLARE_FLEX_ARRAY, which in C++
// adds a one-byte empty struct in front of the array. That moves the array
// (kvm_cpuid2::entries lands at offset 12 instead of 8) and changes the size
// encoded in the ioctl number, so the kernel rejects the call with EINVAL.
// Seen with the Debian 12 kernel headers and g++ 12. The structures below
// are the C layouts, and the ioctl numbers are computed from them.
#pragma once

#include <linux/kvm.h>

#include <cstdint>

namespace vmm::uapi {

// Header of struct kvm_cpuid2; kvm_cpuid_entry2[nent] follows it.
struct CpuidHeader {
    uint32_t nent;
    uint32_t padding;
};
static_assert(sizeof(CpuidHeader) == 8, "kvm_cpuid2 header is 8 bytes");

constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);

}  // namespace vmm::uapi
