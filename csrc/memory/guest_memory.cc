#include "memory/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "memory/image.h"
#include "vmm_abi.h"

namespace vmm {

GuestMemory::~GuestMemory() { unmap(); }

Status GuestMemory::map(const ImageLayout &layout, uint64_t ram_size) {
    unmap();
    // MAP_NORESERVE: guest RAM is committed page by page as the guest touches
    // it, so a 16 MiB VM that uses 40 KiB costs 40 KiB.
    void *base = mmap(nullptr, ram_size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        return Status::from_errno("ERR_OUT_OF_MEMORY",
                                  format("mmap of %llu bytes of guest RAM failed: %s",
                                         static_cast<unsigned long long>(ram_size),
                                         std::strerror(err)),
                                  err, "mmap");
    }
    // layout.size <= ram_size: the caller checked that the image fits.
    void *image = mmap(base, layout.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED,
                       layout.fd, 0);
    if (image == MAP_FAILED) {
        int err = errno;
        munmap(base, ram_size);
        return Status::from_errno("ERR_OUT_OF_MEMORY",
                                  format("mmap of the image layout failed: %s",
                                         std::strerror(err)),
                                  err, "mmap");
    }
    base_ = static_cast<uint8_t *>(base);
    size_ = ram_size;
    return Status::success();
}

void GuestMemory::unmap() {
    if (base_ != nullptr) {
        munmap(base_, size_);
        base_ = nullptr;
        size_ = 0;
    }
}

uint8_t *GuestMemory::user_range(uint64_t gpa, uint64_t len) const {
    if (gpa < VMM_RESERVED_END) {
        return nullptr;
    }
    return any_range(gpa, len);
}

uint8_t *GuestMemory::any_range(uint64_t gpa, uint64_t len) const {
    uint64_t end;
    if (base_ == nullptr || __builtin_add_overflow(gpa, len, &end) || end > size_) {
        return nullptr;
    }
    return base_ + gpa;
}

bool GuestMemory::resident_bytes(uint64_t *private_bytes, uint64_t *shared_bytes) const {
    *private_bytes = 0;
    *shared_bytes = 0;
    if (base_ == nullptr) {
        return true;
    }
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    // pagemap entry bits: 63 present, 61 file page or shared anonymous page.
    // A MAP_PRIVATE page that was written becomes anonymous, so bit 61 tells
    // an image page still shared with other VMs from this VM's own copy.
    constexpr uint64_t kPresent = 1ull << 63;
    constexpr uint64_t kFileOrShared = 1ull << 61;
    const uint64_t pages = size_ / VMM_PAGE_SIZE;
    const uint64_t first = reinterpret_cast<uint64_t>(base_) / VMM_PAGE_SIZE;
    std::vector<uint64_t> entries(4096);
    bool ok = true;
    for (uint64_t done = 0; done < pages;) {
        uint64_t batch = pages - done < entries.size() ? pages - done : entries.size();
        ssize_t n = pread(fd, entries.data(), batch * 8, static_cast<off_t>((first + done) * 8));
        if (n != static_cast<ssize_t>(batch * 8)) {
            ok = false;
            break;
        }
        for (uint64_t i = 0; i < batch; i++) {
            if ((entries[i] & kPresent) == 0) {
                continue;
            }
            if (entries[i] & kFileOrShared) {
                *shared_bytes += VMM_PAGE_SIZE;
            } else {
                *private_bytes += VMM_PAGE_SIZE;
            }
        }
        done += batch;
    }
    close(fd);
    return ok;
}

}  // namespace vmm
