// A validated guest image and its memory layouts: sealed memfds that every
// VM of the image maps MAP_PRIVATE, so the image's pages exist once on the
// host however many VMs run it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "memory/elf.h"
#include "memory/source.h"

namespace vmm {


class Image {
public:
    // Validates an ELF file. Code: ERR_IMAGE_INVALID with the reason.
    static Status parse(const uint8_t *data, size_t size, std::shared_ptr<Image> *out);

    ~Image();
    Image(const Image &) = delete;
    Image &operator=(const Image &) = delete;

    uint64_t entry() const { return elf_.entry; }
    // Guest bytes the segments need: the smallest RAM that contains them.
    uint64_t load_end() const { return elf_.load_end; }
    const ElfImage &elf() const { return elf_; }

    // Returns the layout for `ram_size`, building and sealing it on first
    // use: guest physical [0, size) with the supervisor area, an empty boot
    // information page and the loaded segments. Thread-safe.
    // Codes: ERR_OUT_OF_MEMORY, ERR_RESOURCE_LIMIT.
    Status layout(uint64_t ram_size, std::shared_ptr<const MemorySource> *out);

    // Bytes of layout memfds of this image (each page counted once).
    uint64_t layout_bytes() const;

private:
    Image() = default;
    Status build_layout(uint64_t ram_size, std::shared_ptr<const MemorySource> *out) const;

    ElfImage elf_;
    std::vector<uint8_t> file_;
    mutable std::mutex mutex_;
    std::map<uint64_t, std::shared_ptr<const MemorySource>> layouts_;  // by RAM size
};

}  // namespace vmm
