// SHA-256 (FIPS 180-4), for snapshot checksums and content hashes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace vmm {

class Sha256 {
public:
    Sha256();
    void update(const void *data, size_t size);
    std::array<uint8_t, 32> finish();

private:
    void block(const uint8_t *chunk);

    uint32_t state_[8];
    uint8_t buffer_[64];
    size_t buffered_ = 0;
    uint64_t length_ = 0;
};

}  // namespace vmm
