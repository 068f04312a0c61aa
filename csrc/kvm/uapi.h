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

namespace vmm::uapi {

// Header of struct kvm_msrs; kvm_msr_entry[nmsrs] follows it.
struct MsrsHeader {
    uint32_t nmsrs;
    uint32_t pad;
};
static_assert(sizeof(MsrsHeader) == 8, "kvm_msrs header is 8 bytes");

// Header of struct kvm_msr_list; uint32_t indices[nmsrs] follows it.
struct MsrListHeader {
    uint32_t nmsrs;
};

// struct kvm_xsave without its flexible tail: KVM_SET_XSAVE and
// KVM_GET_XSAVE2 encode this 4096-byte size; KVM_GET_XSAVE2 may write up to
// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes.
struct Xsave {
    uint32_t region[1024];
};

constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
constexpr unsigned long kGetXsave2 = _IOR(KVMIO, 0xcf, Xsave);
constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, Xsave);

}  // namespace vmm::uapi
