#include "kvm/vcpu_state.h"

#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "kvm/system.h"
#include "kvm/uapi.h"

namespace vmm {

namespace {

Status state_error(const char *what, int err) {
    return Status::from_errno("ERR_KVM_STATE", format("%s failed: %s", what, std::strerror(err)),
                              err, "ioctl");
}

template <typename T>
Status get(int fd, unsigned long request, const char *name, T *out) {
    if (ioctl(fd, request, out) < 0) {
        return state_error(name, errno);
    }
    return Status::success();
}

template <typename T>
Status set(int fd, unsigned long request, const char *name, const T &value) {
    if (ioctl(fd, request, &value) < 0) {
        return state_error(name, errno);
    }
    return Status::success();
}

// Reads or writes `entries` with KVM_GET_MSRS / KVM_SET_MSRS. Both return
// how many entries they handled, which must be all of them.
Status transfer_msrs(int fd, unsigned long request, const char *name,
                     std::vector<kvm_msr_entry> *entries) {
    std::vector<uint8_t> buf(sizeof(uapi::MsrsHeader) + entries->size() * sizeof(kvm_msr_entry));
    auto *header = reinterpret_cast<uapi::MsrsHeader *>(buf.data());
    header->nmsrs = static_cast<uint32_t>(entries->size());
    std::memcpy(buf.data() + sizeof(*header), entries->data(),
                entries->size() * sizeof(kvm_msr_entry));
    int done = ioctl(fd, request, buf.data());
    if (done < 0) {
        return state_error(name, errno);
    }
    if (static_cast<size_t>(done) != entries->size()) {
        return Status::failure("ERR_KVM_STATE",
                               format("%s handled %d of %zu MSRs; MSR 0x%x cannot be %s", name,
                                      done, entries->size(), (*entries)[done].index,
                                      request == uapi::kGetMsrs ? "saved" : "restored"));
    }
    std::memcpy(entries->data(), buf.data() + sizeof(*header),
                entries->size() * sizeof(kvm_msr_entry));
    return Status::success();
}

void append(std::vector<uint8_t> *out, const void *data, size_t size) {
    const auto *bytes = static_cast<const uint8_t *>(data);
    out->insert(out->end(), bytes, bytes + size);
}

void append_u32(std::vector<uint8_t> *out, uint32_t value) { append(out, &value, sizeof(value)); }

// Sequential reader over a bounded buffer; every read checks the remaining size.
class Reader {
public:
    Reader(const uint8_t *data, size_t size) : data_(data), size_(size) {}
    bool read(void *out, size_t n) {
        if (n > size_ - offset_) {
            return false;
        }
        std::memcpy(out, data_ + offset_, n);
        offset_ += n;
        return true;
    }
    bool done() const { return offset_ == size_; }

private:
    const uint8_t *data_;
    size_t size_;
    size_t offset_ = 0;
};

}  // namespace

Status VcpuState::capture(const KvmSystem &sys, int vcpu_fd) {
    Status s = get(vcpu_fd, KVM_GET_REGS, "KVM_GET_REGS", &regs);
    if (s.ok()) s = get(vcpu_fd, KVM_GET_SREGS, "KVM_GET_SREGS", &sregs);
    if (s.ok()) s = get(vcpu_fd, KVM_GET_XCRS, "KVM_GET_XCRS", &xcrs);
    if (s.ok()) s = get(vcpu_fd, KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", &debugregs);
    if (s.ok()) s = get(vcpu_fd, KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", &events);
    if (s.ok()) s = get(vcpu_fd, KVM_GET_MP_STATE, "KVM_GET_MP_STATE", &mp_state);
    if (!s.ok()) {
        return s;
    }
    xsave.assign(sys.xsave_size(), 0);
    if (ioctl(vcpu_fd, uapi::kGetXsave2, xsave.data()) < 0) {
        return state_error("KVM_GET_XSAVE2", errno);
    }
    msrs.clear();
    for (uint32_t index : sys.saved_msrs()) {
        kvm_msr_entry entry{};
        entry.index = index;
        msrs.push_back(entry);
    }
    return transfer_msrs(vcpu_fd, uapi::kGetMsrs, "KVM_GET_MSRS", &msrs);
}

Status VcpuState::capture_xsave(int vcpu_fd) {
    if (ioctl(vcpu_fd, uapi::kGetXsave2, xsave.data()) < 0) {
        return state_error("KVM_GET_XSAVE2", errno);
    }
    return Status::success();
}

Status VcpuState::restore(int vcpu_fd) const {
    // Special registers first (paging, EFER), then the rest. MSRs keep the
    // order of saved_msrs(), which puts IA32_TSC first.
    Status s = set(vcpu_fd, KVM_SET_SREGS, "KVM_SET_SREGS", sregs);
    if (s.ok()) s = set(vcpu_fd, KVM_SET_REGS, "KVM_SET_REGS", regs);
    if (s.ok()) s = set(vcpu_fd, KVM_SET_XCRS, "KVM_SET_XCRS", xcrs);
    if (!s.ok()) {
        return s;
    }
    // KVM_SET_XSAVE reads 4096 bytes, or more when the guest enabled larger
    // state components; xsave holds xsave_size() >= 4096 bytes.
    if (xsave.size() < sizeof(uapi::Xsave) ||
        ioctl(vcpu_fd, uapi::kSetXsave, xsave.data()) < 0) {
        return state_error("KVM_SET_XSAVE", xsave.size() < sizeof(uapi::Xsave) ? EINVAL : errno);
    }
    std::vector<kvm_msr_entry> entries = msrs;
    s = transfer_msrs(vcpu_fd, uapi::kSetMsrs, "KVM_SET_MSRS", &entries);
    if (s.ok()) s = set(vcpu_fd, KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", events);
    if (s.ok()) s = set(vcpu_fd, KVM_SET_MP_STATE, "KVM_SET_MP_STATE", mp_state);
    if (s.ok()) s = set(vcpu_fd, KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", debugregs);
    return s;
}

Status VcpuState::match_user_state(int vcpu_fd, UserStateMatch *out) const {
    kvm_sregs current{};
    Status s = get(vcpu_fd, KVM_GET_SREGS, "KVM_GET_SREGS", &current);
    if (!s.ok()) {
        return s;
    }
    // The six segment registers are consecutive in kvm_sregs.
    out->sregs = std::memcmp(&current.cs, &sregs.cs, sizeof(kvm_segment) * 6) == 0;
    std::vector<uint8_t> area(xsave.size(), 0);
    if (ioctl(vcpu_fd, uapi::kGetXsave2, area.data()) < 0) {
        return state_error("KVM_GET_XSAVE2", errno);
    }
    out->xsave = area == xsave;
    return Status::success();
}

Status VcpuState::restore_user_state(int vcpu_fd, const UserStateMatch &match) const {
    if (!match.sregs) {
        Status s = set(vcpu_fd, KVM_SET_SREGS, "KVM_SET_SREGS", sregs);
        if (!s.ok()) {
            return s;
        }
    }
    if (!match.xsave && ioctl(vcpu_fd, uapi::kSetXsave, xsave.data()) < 0) {
        return state_error("KVM_SET_XSAVE", errno);
    }
    return Status::success();
}

std::vector<uint8_t> VcpuState::serialize() const {
    std::vector<uint8_t> out;
    append(&out, &regs, sizeof(regs));
    append(&out, &sregs, sizeof(sregs));
    append(&out, &xcrs, sizeof(xcrs));
    append(&out, &debugregs, sizeof(debugregs));
    append(&out, &events, sizeof(events));
    append(&out, &mp_state, sizeof(mp_state));
    append_u32(&out, static_cast<uint32_t>(xsave.size()));
    append(&out, xsave.data(), xsave.size());
    append_u32(&out, static_cast<uint32_t>(msrs.size()));
    append(&out, msrs.data(), msrs.size() * sizeof(kvm_msr_entry));
    return out;
}

std::string VcpuState::deserialize(const uint8_t *data, size_t size, const KvmSystem &sys) {
    Reader in(data, size);
    uint32_t xsave_size = 0;
    uint32_t msr_count = 0;
    if (!in.read(&regs, sizeof(regs)) || !in.read(&sregs, sizeof(sregs)) ||
        !in.read(&xcrs, sizeof(xcrs)) || !in.read(&debugregs, sizeof(debugregs)) ||
        !in.read(&events, sizeof(events)) || !in.read(&mp_state, sizeof(mp_state)) ||
        !in.read(&xsave_size, sizeof(xsave_size))) {
        return "the vCPU state is truncated";
    }
    if (xsave_size < sizeof(uapi::Xsave) || xsave_size > sys.xsave_size()) {
        return format("the snapshot's XSAVE area is %u bytes, this host supports %u to %zu",
                      xsave_size, static_cast<unsigned>(sizeof(uapi::Xsave)), sys.xsave_size());
    }
    xsave.assign(xsave_size, 0);
    if (!in.read(xsave.data(), xsave_size) || !in.read(&msr_count, sizeof(msr_count))) {
        return "the vCPU state is truncated";
    }
    if (msr_count > 256) {
        return format("the vCPU state lists %u MSRs, more than the 256 allowed", msr_count);
    }
    msrs.assign(msr_count, kvm_msr_entry{});
    if (!in.read(msrs.data(), msr_count * sizeof(kvm_msr_entry)) || !in.done()) {
        return "the vCPU state has the wrong size";
    }
    for (const kvm_msr_entry &entry : msrs) {
        bool known = false;
        for (uint32_t index : sys.saved_msrs()) {
            known = known || index == entry.index;
        }
        if (!known) {
            return format("the snapshot restores MSR 0x%x, which this host's KVM cannot set",
                          entry.index);
        }
    }
    return std::string();
}

}  // namespace vmm
