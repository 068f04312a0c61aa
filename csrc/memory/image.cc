#include "memory/image.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "kvm/x86_layout.h"
#include "memory/snapshot.h"
#include "vmm_abi.h"

namespace vmm {

// Each segment end adds at most one 4 KiB page table, so the pool must hold
// two for every PT_LOAD that parse_elf accepts.
static_assert(x86::kPtPoolPages >= 2 * kElfMaxProgramHeaders,
              "the page-table pool is too small for the most segments an image may have");

namespace {

// The user access of each segment's pages, from the first page it touches to
// the last. parse_elf rejects segments that share a page or set both PF_W
// and PF_X. x86 paging cannot map a page execute-only, so PF_X alone maps
// readable and executable.
std::vector<x86::PageRange> segment_page_ranges(const ElfImage &elf) {
    std::vector<x86::PageRange> ranges;
    for (const ElfSegment &seg : elf.segments) {
        x86::PageRange range;
        // parse_elf checked that vaddr + memsz is at most VMM_RAM_MAX, so
        // neither sum overflows.
        range.start = seg.vaddr & ~(VMM_PAGE_SIZE - 1);
        range.end = (seg.vaddr + seg.memsz + VMM_PAGE_SIZE - 1) & ~(VMM_PAGE_SIZE - 1);
        if ((seg.flags & kElfPfX) != 0) {
            range.access = x86::PageAccess::kReadExecute;
        } else if ((seg.flags & kElfPfW) != 0) {
            range.access = x86::PageAccess::kReadWrite;
        } else {
            range.access = x86::PageAccess::kReadOnly;
        }
        ranges.push_back(range);
    }
    return ranges;
}

// Sets the bits of the non-zero pages of memfd `fd`, mapped shared at
// `bytes`. Only the data regions are read, because reading a hole of a memfd
// through a shared mapping allocates a page for it, and zero-filled segments
// far from the image's start would then cost their whole size.
void mark_nonzero_pages(int fd, const uint8_t *bytes, uint64_t size, PageBitmap *present) {
    uint64_t at = 0;
    while (at < size) {
        uint64_t start = at;
        uint64_t end = size;
        off_t data = lseek(fd, static_cast<off_t>(at), SEEK_DATA);
        if (data >= 0) {
            off_t hole = lseek(fd, data, SEEK_HOLE);
            start = static_cast<uint64_t>(data);
            end = hole < 0 ? size : std::min(static_cast<uint64_t>(hole), size);
        } else if (errno == ENXIO) {
            return;  // no data at or after `at`
        }
        // Without SEEK_DATA, the whole rest of the memfd counts as data.
        for (uint64_t page = start / VMM_PAGE_SIZE; page * VMM_PAGE_SIZE < end; page++) {
            if (!page_is_zero(bytes + page * VMM_PAGE_SIZE)) {
                present->set(page);
            }
        }
        at = end > at ? end : at + VMM_PAGE_SIZE;
    }
}

}  // namespace

bool page_is_zero(const uint8_t *page) {
    const auto *words = reinterpret_cast<const uint64_t *>(page);
    uint64_t any = 0;
    for (size_t i = 0; i < VMM_PAGE_SIZE / 8; i++) {
        any |= words[i];
    }
    return any == 0;
}

Status Image::parse(const uint8_t *data, size_t size, std::shared_ptr<Image> *out) {
    std::shared_ptr<Image> image(new Image());
    std::string reason = parse_elf(data, size, &image->elf_);
    if (!reason.empty()) {
        return Status::failure("ERR_IMAGE_INVALID", "invalid guest image: " + reason);
    }
    image->file_.assign(data, data + size);
    *out = std::move(image);
    return Status::success();
}

Image::~Image() = default;

Status Image::layout(uint64_t ram_size, std::shared_ptr<const MemorySource> *out) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = layouts_.find(ram_size);
    if (it == layouts_.end()) {
        std::shared_ptr<const MemorySource> built;
        Status status = build_layout(ram_size, &built);
        if (!status.ok()) {
            return status;
        }
        it = layouts_.emplace(ram_size, std::move(built)).first;
    }
    *out = it->second;
    return Status::success();
}

uint64_t Image::layout_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t total = 0;
    for (const auto &entry : layouts_) {
        total += entry.second->present.count() * VMM_PAGE_SIZE;
    }
    return total;
}

Status Image::build_layout(uint64_t ram_size, std::shared_ptr<const MemorySource> *out) const {
    const uint64_t size = elf_.load_end > VMM_RESERVED_END ? elf_.load_end : VMM_RESERVED_END;
    int fd = -1;
    Status created = create_memfd("vmm-image", size, &fd);
    if (!created.ok()) {
        return created;
    }
    auto fail = [&](const char *syscall) {
        int err = errno;
        close(fd);
        return Status::from_errno("ERR_OUT_OF_MEMORY",
                                  format("building the image layout failed in %s: %s", syscall,
                                         std::strerror(err)),
                                  err, syscall);
    };
    void *map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        return fail("mmap");
    }
    auto *bytes = static_cast<uint8_t *>(map);
    // The memfd is new and therefore zero, as the builder requires. The
    // engine checked ram_size against load_end before asking for a layout.
    std::string reason = x86::build_supervisor_area(bytes, ram_size, segment_page_ranges(elf_));
    if (!reason.empty()) {
        munmap(map, size);
        close(fd);
        return Status::failure("ERR_IMAGE_INVALID",
                               "mapping the guest image failed: " + reason);
    }
    for (const ElfSegment &seg : elf_.segments) {
        // parse_elf checked offset + filesz against the file and
        // vaddr + memsz against load_end, which is at most `size`.
        std::memcpy(bytes + seg.vaddr, file_.data() + seg.offset, seg.filesz);
    }
    auto source = std::make_shared<MemorySource>();
    source->present = PageBitmap(ram_size / VMM_PAGE_SIZE);
    mark_nonzero_pages(fd, bytes, size, &source->present);
    munmap(map, size);

    // Sealed: no VM or later code can change the pages every VM shares.
    Status sealed = seal_memfd(fd);
    if (!sealed.ok()) {
        close(fd);
        return sealed;
    }
    source->fd = fd;
    source->size = size;
    source->ram_size = ram_size;
    *out = std::move(source);
    return Status::success();
}

}  // namespace vmm
