#include "memory/page_store.h"

#include <cstring>

#include "vmm_abi.h"

namespace vmm {

namespace {

constexpr uint8_t kZero = 0;
constexpr uint8_t kRuns = 1;
constexpr uint8_t kShared = 2;

// Runs larger than this share of a page are stored as a whole page instead.
constexpr size_t kMaxRunsBytes = VMM_PAGE_SIZE / 2;
// Unchanged gaps shorter than this join two runs: a run header costs 8 bytes.
constexpr size_t kJoinGap = 8;

void put32(std::vector<uint8_t> *out, uint32_t value) {
    const auto *bytes = reinterpret_cast<const uint8_t *>(&value);
    out->insert(out->end(), bytes, bytes + 4);
}

bool get32(const std::vector<uint8_t> &in, size_t *at, uint32_t *value) {
    if (in.size() < 4 || *at > in.size() - 4) {
        return false;
    }
    std::memcpy(value, in.data() + *at, 4);
    *at += 4;
    return true;
}

uint64_t hash_page(const uint8_t *page) {
    // FNV-1a over 64-bit words: fast, and collisions are checked by memcmp.
    uint64_t hash = 1469598103934665603ull;
    const auto *words = reinterpret_cast<const uint64_t *>(page);
    for (size_t i = 0; i < VMM_PAGE_SIZE / 8; i++) {
        hash = (hash ^ words[i]) * 1099511628211ull;
    }
    return hash;
}

}  // namespace

std::vector<uint8_t> encode_runs(const uint8_t *base, const uint8_t *current, size_t size) {
    std::vector<uint8_t> out;
    size_t i = 0;
    while (i < size) {
        // Skip equal 8-byte words first: most of a page or state is unchanged.
        while (i + 8 <= size && std::memcmp(base + i, current + i, 8) == 0) {
            i += 8;
        }
        if (i >= size) {
            break;
        }
        if (base[i] == current[i]) {
            i++;
            continue;
        }
        size_t start = i;
        size_t end = i + 1;
        size_t same = 0;
        for (size_t j = end; j < size; j++) {
            if (base[j] == current[j]) {
                if (++same >= kJoinGap) {
                    break;
                }
            } else {
                same = 0;
                end = j + 1;
            }
        }
        put32(&out, static_cast<uint32_t>(start));
        put32(&out, static_cast<uint32_t>(end - start));
        out.insert(out.end(), current + start, current + end);
        i = end;
    }
    return out;
}

bool apply_runs(const std::vector<uint8_t> &runs, uint8_t *out, size_t size) {
    size_t at = 0;
    while (at < runs.size()) {
        uint32_t offset;
        uint32_t length;
        if (!get32(runs, &at, &offset) || !get32(runs, &at, &length) || offset > size ||
            length > size - offset || length > runs.size() - at) {
            return false;
        }
        std::memcpy(out + offset, runs.data() + at, length);
        at += length;
    }
    return true;
}

uint32_t PageTable::acquire(const uint8_t *page) {
    uint64_t hash = hash_page(page);
    std::lock_guard<std::mutex> lock(mutex_);
    auto range = by_hash_.equal_range(hash);
    for (auto it = range.first; it != range.second; ++it) {
        Entry &entry = entries_[it->second];
        if (std::memcmp(entry.data.get(), page, VMM_PAGE_SIZE) == 0) {
            entry.refs++;
            return it->second;
        }
    }
    uint32_t ref;
    if (!free_.empty()) {
        ref = free_.back();
        free_.pop_back();
    } else {
        ref = static_cast<uint32_t>(entries_.size());
        entries_.emplace_back();
    }
    Entry &entry = entries_[ref];
    entry.data.reset(new uint8_t[VMM_PAGE_SIZE]);
    std::memcpy(entry.data.get(), page, VMM_PAGE_SIZE);
    entry.hash = hash;
    entry.refs = 1;
    by_hash_.emplace(hash, ref);
    stored_ += VMM_PAGE_SIZE;
    return ref;
}

void PageTable::release(uint32_t ref) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ref >= entries_.size() || entries_[ref].refs == 0) {
        return;
    }
    Entry &entry = entries_[ref];
    if (--entry.refs > 0) {
        return;
    }
    auto range = by_hash_.equal_range(entry.hash);
    for (auto it = range.first; it != range.second; ++it) {
        if (it->second == ref) {
            by_hash_.erase(it);
            break;
        }
    }
    entry.data.reset();
    free_.push_back(ref);
    stored_ -= VMM_PAGE_SIZE;
}

const uint8_t *PageTable::data(uint32_t ref) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return ref < entries_.size() ? entries_[ref].data.get() : nullptr;
}

uint64_t PageTable::bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stored_;
}

void StoredPages::add(PageTable &table, uint64_t page, const uint8_t *base, const uint8_t *current) {
    if (std::memcmp(base, current, VMM_PAGE_SIZE) == 0) {
        return;  // equal to the base: nothing to store
    }
    put32(&records_, static_cast<uint32_t>(page));
    if (page_is_zero(current)) {
        records_.push_back(kZero);
        return;
    }
    std::vector<uint8_t> runs = encode_runs(base, current, VMM_PAGE_SIZE);
    if (runs.size() <= kMaxRunsBytes) {
        records_.push_back(kRuns);
        put32(&records_, static_cast<uint32_t>(runs.size()));
        records_.insert(records_.end(), runs.begin(), runs.end());
        return;
    }
    uint32_t ref = table.acquire(current);
    refs_.push_back(ref);
    records_.push_back(kShared);
    put32(&records_, ref);
}

bool StoredPages::restore(const PageTable &table, uint8_t *memory, uint64_t ram_size) const {
    size_t at = 0;
    std::vector<uint8_t> runs;
    while (at < records_.size()) {
        uint32_t page;
        if (!get32(records_, &at, &page) || at >= records_.size() ||
            page >= ram_size / VMM_PAGE_SIZE) {
            return false;
        }
        uint8_t kind = records_[at++];
        uint8_t *dst = memory + static_cast<uint64_t>(page) * VMM_PAGE_SIZE;
        if (kind == kZero) {
            std::memset(dst, 0, VMM_PAGE_SIZE);
        } else if (kind == kRuns) {
            uint32_t length;
            if (!get32(records_, &at, &length) || length > records_.size() - at) {
                return false;
            }
            // The runs apply onto the base content, which the pooled
            // context's memory holds for this page.
            runs.assign(records_.begin() + static_cast<std::ptrdiff_t>(at),
                        records_.begin() + static_cast<std::ptrdiff_t>(at + length));
            at += length;
            if (!apply_runs(runs, dst, VMM_PAGE_SIZE)) {
                return false;
            }
        } else if (kind == kShared) {
            uint32_t ref;
            const uint8_t *data = nullptr;
            if (!get32(records_, &at, &ref) || (data = table.data(ref)) == nullptr) {
                return false;
            }
            std::memcpy(dst, data, VMM_PAGE_SIZE);
        } else {
            return false;
        }
    }
    return true;
}

void StoredPages::release(PageTable &table) {
    for (uint32_t ref : refs_) {
        table.release(ref);
    }
    refs_.clear();
    refs_.shrink_to_fit();
    records_.clear();
    records_.shrink_to_fit();
}

}  // namespace vmm
