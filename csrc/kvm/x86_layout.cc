#include "kvm/x86_layout.h"

#include <cstring>
#include <utility>

#include "common/status.h"
#include "vmm_abi.h"

namespace vmm::x86 {

namespace {

// Page table entry bits. Accessed and Dirty are preset so that the CPU never
// writes to the shared page tables, which would give every VM a private copy.
constexpr uint64_t kPresent = 1ull << 0;
constexpr uint64_t kWritable = 1ull << 1;
constexpr uint64_t kUser = 1ull << 2;
constexpr uint64_t kAccessed = 1ull << 5;
constexpr uint64_t kDirty = 1ull << 6;
constexpr uint64_t kLarge = 1ull << 7;
constexpr uint64_t kNoExecute = 1ull << 63;  // honored because EFER.NXE is set
constexpr uint64_t kAddressMask = 0x000FFFFFFFFFF000ull;

// Non-leaf entries allow everything, so the leaf entry alone sets the access.
constexpr uint64_t kTable = kPresent | kWritable | kUser | kAccessed;
constexpr uint64_t kLeaf = kPresent | kAccessed | kDirty;
constexpr uint64_t k2MiB = 2ull << 20;
constexpr uint64_t k1GiB = 1ull << 30;
constexpr uint64_t kEntriesPerTable = VMM_PAGE_SIZE / 8;

void put64(uint8_t *low, uint64_t gpa, uint64_t value) { std::memcpy(low + gpa, &value, 8); }

uint64_t get64(const uint8_t *low, uint64_t gpa) {
    uint64_t value;
    std::memcpy(&value, low + gpa, 8);
    return value;
}

// Leaf entry bits of a user page with `access`, without the address.
uint64_t user_bits(PageAccess access) {
    switch (access) {
    case PageAccess::kReadWrite:
        return kLeaf | kUser | kWritable | kNoExecute;
    case PageAccess::kReadOnly:
        return kLeaf | kUser | kNoExecute;
    case PageAccess::kReadExecute:
        return kLeaf | kUser;
    }
    return kLeaf | kUser | kNoExecute;
}

// Address of the page directory entry for the 2 MiB range at `address`.
uint64_t pde_gpa(uint64_t address) {
    return kPd0 + (address / k1GiB) * VMM_PAGE_SIZE + ((address % k1GiB) / k2MiB) * 8;
}

std::string check_ranges(uint64_t ram_size, const std::vector<PageRange> &ranges) {
    if (ram_size % k2MiB != 0 || ram_size < k2MiB || ram_size > VMM_RAM_MAX) {
        return format("RAM size 0x%llx is not a multiple of 2 MiB up to 0x%llx",
                      static_cast<unsigned long long>(ram_size), VMM_RAM_MAX);
    }
    uint64_t previous_end = VMM_RESERVED_END;
    for (const PageRange &range : ranges) {
        if (range.start % VMM_PAGE_SIZE != 0 || range.end % VMM_PAGE_SIZE != 0 ||
            range.start >= range.end || range.start < previous_end || range.end > ram_size) {
            return format("page range 0x%llx-0x%llx is not page-aligned, sorted and inside "
                          "RAM from 0x%llx to 0x%llx",
                          static_cast<unsigned long long>(range.start),
                          static_cast<unsigned long long>(range.end),
                          static_cast<unsigned long long>(previous_end),
                          static_cast<unsigned long long>(ram_size));
        }
        previous_end = range.end;
    }
    return "";
}

// Sets the access of each page of the 2 MiB range at `base` from `ranges`,
// starting the search at *next, the first range that does not end at or
// below `base`. Advances *next past the ranges that end inside this 2 MiB.
void fill_region(uint64_t base, const std::vector<PageRange> &ranges, size_t *next,
                 PageAccess (&pages)[kEntriesPerTable]) {
    for (PageAccess &page : pages) {
        page = PageAccess::kReadWrite;
    }
    const uint64_t limit = base + k2MiB;
    for (size_t i = *next; i < ranges.size() && ranges[i].start < limit; i++) {
        uint64_t first = ranges[i].start > base ? ranges[i].start : base;
        uint64_t last = ranges[i].end < limit ? ranges[i].end : limit;
        for (uint64_t address = first; address < last; address += VMM_PAGE_SIZE) {
            pages[(address - base) / VMM_PAGE_SIZE] = ranges[i].access;
        }
    }
    while (*next < ranges.size() && ranges[*next].end <= limit) {
        ++*next;
    }
}

bool is_uniform(const PageAccess (&pages)[kEntriesPerTable]) {
    for (PageAccess page : pages) {
        if (page != pages[0]) {
            return false;
        }
    }
    return true;
}

std::string build_page_tables(uint8_t *low, uint64_t ram_size,
                              const std::vector<PageRange> &ranges) {
    put64(low, kPml4, kPdpt | kTable);
    for (uint64_t gib = 0; gib < 4; gib++) {
        put64(low, kPdpt + gib * 8, (kPd0 + gib * VMM_PAGE_SIZE) | kTable);
    }

    // The first 2 MiB: page 0 stays unmapped so that null pointers fault.
    // The supervisor pages lack the user bit, and only the stubs' page is
    // executable and only their stack is writable. The boot information page
    // is read-only, and the rest of the reserved area, which includes the
    // page-table pool, is unmapped.
    put64(low, kPd0, kPtLow | kTable);
    for (uint64_t page = 1; page < kSupervisorEnd / VMM_PAGE_SIZE; page++) {
        uint64_t address = page * VMM_PAGE_SIZE;
        uint64_t bits = kLeaf | kNoExecute;
        if (address == kStubs) {
            bits = kLeaf;
        } else if (address >= kStackBottom && address < kStackTop) {
            bits |= kWritable;
        }
        put64(low, kPtLow + page * 8, address | bits);
    }
    put64(low, kPtLow + (VMM_BOOT_INFO_ADDR / VMM_PAGE_SIZE) * 8,
          VMM_BOOT_INFO_ADDR | user_bits(PageAccess::kReadOnly));

    // RAM from 1 MiB: a large page for each 2 MiB whose pages share one
    // access, a table from the pool for the others. The first 2 MiB always
    // uses kPtLow.
    PageAccess pages[kEntriesPerTable];
    size_t next = 0;
    uint64_t pool_used = 0;
    for (uint64_t base = 0; base < ram_size; base += k2MiB) {
        fill_region(base, ranges, &next, pages);
        uint64_t table;
        if (base == 0) {
            table = kPtLow;
        } else if (is_uniform(pages)) {
            put64(low, pde_gpa(base), base | user_bits(pages[0]) | kLarge);
            continue;
        } else if (pool_used == kPtPoolPages) {
            return format("the page ranges need more than the %llu page tables of the pool",
                          static_cast<unsigned long long>(kPtPoolPages));
        } else {
            table = kPtPool + pool_used * VMM_PAGE_SIZE;
            pool_used++;
            put64(low, pde_gpa(base), table | kTable);
        }
        uint64_t first = base == 0 ? VMM_RESERVED_END / VMM_PAGE_SIZE : 0;
        for (uint64_t index = first; index < kEntriesPerTable; index++) {
            uint64_t address = base + index * VMM_PAGE_SIZE;
            put64(low, table + index * 8, address | user_bits(pages[index]));
        }
    }

    // The doorbell page, in the last 2 MiB below 4 GiB, above any RAM.
    put64(low, pde_gpa(VMM_DOORBELL_ADDR), kPtDoorbell | kTable);
    put64(low, kPtDoorbell + (VMM_DOORBELL_ADDR % k2MiB / VMM_PAGE_SIZE) * 8,
          VMM_DOORBELL_ADDR | kLeaf | kUser | kWritable | kNoExecute);
    return "";
}

void build_gdt(uint8_t *low) {
    // Descriptors with the accessed bit preset, for the same reason as above.
    put64(low, kGdt + 0x00, 0);
    put64(low, kGdt + kKernelCs, 0x00AF9B000000FFFFull);
    put64(low, kGdt + kKernelDs, 0x00CF93000000FFFFull);
    put64(low, kGdt + (kUserDs & ~3u), 0x00CFF3000000FFFFull);
    put64(low, kGdt + (kUserCs & ~3u), 0x00AFFB000000FFFFull);

    // 64-bit TSS descriptor (busy type, as KVM_SET_SREGS expects for TR).
    uint64_t base = kTss;
    uint64_t limit = 0x67;
    uint64_t lo = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x8Bull << 40) |
                  (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
    put64(low, kGdt + kTssSelector, lo);
    put64(low, kGdt + kTssSelector + 8, base >> 32);

    // TSS: rsp0 at offset 4, I/O map base at offset 0x66 past the limit (no bitmap).
    put64(low, kTss + 4, kStackTop);
    uint16_t iomap = 0x68;
    std::memcpy(low + kTss + 0x66, &iomap, 2);
}

void build_idt_and_stubs(uint8_t *low) {
    for (unsigned vector = 0; vector < kStubVectors; vector++) {
        uint64_t stub = kStubs + vector * kStubSize;
        uint8_t *code = low + stub;
        size_t n = 0;
        if (!vector_has_error_code(vector)) {
            code[n++] = 0x6A;  // push imm8 0
            code[n++] = 0x00;
        }
        code[n++] = 0x6A;  // push imm8 vector
        code[n++] = static_cast<uint8_t>(vector);
        code[n++] = 0xE9;  // jmp rel32 to the common tail
        uint64_t tail = kStubs + kStubVectors * kStubSize;
        int32_t rel = static_cast<int32_t>(tail - (stub + n + 4));
        std::memcpy(code + n, &rel, 4);

        uint8_t *gate = low + kIdt + vector * 16;
        uint16_t off_lo = stub & 0xFFFF;
        uint16_t off_mid = (stub >> 16) & 0xFFFF;
        uint32_t off_hi = static_cast<uint32_t>(stub >> 32);
        uint16_t selector = kKernelCs;
        std::memcpy(gate + 0, &off_lo, 2);
        std::memcpy(gate + 2, &selector, 2);
        gate[4] = 0;     // IST 0: use rsp0 from the TSS
        gate[5] = 0x8E;  // present, DPL 0, 64-bit interrupt gate
        std::memcpy(gate + 6, &off_mid, 2);
        std::memcpy(gate + 8, &off_hi, 4);
    }

    // Common tail: push %rdx (the port write needs dx, and the crash report
    // should show the guest's value); mov $kStubPort, %dx; out %al, %dx;
    // jmp . (never resumed).
    uint8_t *tail = low + kStubs + kStubVectors * kStubSize;
    const uint8_t code[] = {0x52, 0x66, 0xBA, kStubPort & 0xFF, kStubPort >> 8, 0xEE, 0xEB, 0xFE};
    std::memcpy(tail, code, sizeof(code));
}

void set_segment(kvm_segment *seg, uint16_t selector, uint8_t type, uint8_t dpl, bool code) {
    std::memset(seg, 0, sizeof(*seg));
    seg->base = 0;
    seg->limit = 0xFFFFFFFF;
    seg->selector = selector;
    seg->type = type;
    seg->present = 1;
    seg->dpl = dpl;
    seg->db = code ? 0 : 1;
    seg->s = 1;
    seg->l = code ? 1 : 0;
    seg->g = 1;
}

}  // namespace

bool vector_has_error_code(unsigned vector) {
    switch (vector) {
    case 8:
    case 10:
    case 11:
    case 12:
    case 13:
    case 14:
    case 17:
    case 21:
    case 29:
    case 30:
        return true;
    default:
        return false;
    }
}

const char *vector_name(unsigned vector) {
    static const char *const names[] = {
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS",
        "#NP", "#SS", "#GP", "#PF", "reserved", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP"};
    if (vector < sizeof(names) / sizeof(names[0])) {
        return names[vector];
    }
    return "vector";
}

std::string build_supervisor_area(uint8_t *low, uint64_t ram_size,
                                  const std::vector<PageRange> &ranges) {
    std::string error = check_ranges(ram_size, ranges);
    if (error.empty()) {
        error = build_page_tables(low, ram_size, ranges);
    }
    if (!error.empty()) {
        return error;
    }
    build_gdt(low);
    build_idt_and_stubs(low);
    return "";
}

std::string read_page_ranges(const uint8_t *low, uint64_t ram_size,
                             std::vector<PageRange> *out) {
    if (ram_size % k2MiB != 0 || ram_size < k2MiB || ram_size > VMM_RAM_MAX) {
        return format("RAM size 0x%llx is not a multiple of 2 MiB up to 0x%llx",
                      static_cast<unsigned long long>(ram_size), VMM_RAM_MAX);
    }
    std::vector<PageRange> ranges;
    // Appends one page or one 2 MiB page, merging it into the last range
    // when that ends at `address` with the same access.
    auto add = [&ranges](uint64_t address, uint64_t size, PageAccess access) {
        if (access == PageAccess::kReadWrite) {
            return;
        }
        if (!ranges.empty() && ranges.back().end == address && ranges.back().access == access) {
            ranges.back().end += size;
        } else {
            ranges.push_back(PageRange{address, address + size, access});
        }
    };
    // Sets *access from a leaf entry, or returns why the engine never
    // builds that entry for RAM.
    auto decode = [](const char *kind, uint64_t entry, uint64_t address, PageAccess *access) {
        const char *problem = nullptr;
        bool writable = (entry & kWritable) != 0;
        bool executable = (entry & kNoExecute) == 0;
        if ((entry & (kPresent | kUser)) != (kPresent | kUser)) {
            problem = "does not map it for user mode";
        } else if (writable && executable) {
            problem = "maps it both writable and executable";
        } else {
            *access = writable ? PageAccess::kReadWrite
                               : (executable ? PageAccess::kReadExecute : PageAccess::kReadOnly);
            return std::string();
        }
        return format("the %s entry 0x%llx for RAM at 0x%llx %s", kind,
                      static_cast<unsigned long long>(entry),
                      static_cast<unsigned long long>(address), problem);
    };

    for (uint64_t base = 0; base < ram_size; base += k2MiB) {
        uint64_t pde = get64(low, pde_gpa(base));
        PageAccess access = PageAccess::kReadWrite;
        if (base != 0 && (pde & kLarge) != 0) {
            std::string problem = decode("page directory", pde, base, &access);
            if (!problem.empty()) {
                return problem;
            }
            add(base, k2MiB, access);
            continue;
        }
        uint64_t table = base == 0 ? kPtLow : pde & kAddressMask;
        if (table != kPtLow && (table < kPtPool || table >= kPtPoolEnd)) {
            return format("the page directory entry 0x%llx for RAM at 0x%llx points outside "
                          "the page-table pool",
                          static_cast<unsigned long long>(pde),
                          static_cast<unsigned long long>(base));
        }
        uint64_t first = base == 0 ? VMM_RESERVED_END / VMM_PAGE_SIZE : 0;
        for (uint64_t index = first; index < kEntriesPerTable; index++) {
            uint64_t address = base + index * VMM_PAGE_SIZE;
            uint64_t pte = get64(low, table + index * 8);
            std::string problem = decode("page table", pte, address, &access);
            if (!problem.empty()) {
                return problem;
            }
            add(address, VMM_PAGE_SIZE, access);
        }
    }
    *out = std::move(ranges);
    return "";
}

void initial_sregs(kvm_sregs *sregs) {
    set_segment(&sregs->cs, kUserCs, 0xB, 3, true);
    set_segment(&sregs->ss, kUserDs, 0x3, 3, false);
    set_segment(&sregs->ds, kUserDs, 0x3, 3, false);
    set_segment(&sregs->es, kUserDs, 0x3, 3, false);
    set_segment(&sregs->fs, kUserDs, 0x3, 3, false);
    set_segment(&sregs->gs, kUserDs, 0x3, 3, false);

    std::memset(&sregs->tr, 0, sizeof(sregs->tr));
    sregs->tr.base = kTss;
    sregs->tr.limit = 0x67;
    sregs->tr.selector = kTssSelector;
    sregs->tr.type = 0xB;
    sregs->tr.present = 1;

    std::memset(&sregs->ldt, 0, sizeof(sregs->ldt));
    sregs->ldt.limit = 0xFFFF;
    sregs->ldt.type = 0x2;
    sregs->ldt.present = 1;

    sregs->gdt.base = kGdt;
    sregs->gdt.limit = kTssSelector + 16 - 1;
    sregs->idt.base = kIdt;
    sregs->idt.limit = kStubVectors * 16 - 1;

    sregs->cr0 = kCr0;
    sregs->cr3 = kPml4;
    sregs->cr4 = kCr4;
    sregs->efer = kEfer;
    sregs->cr2 = 0;
    sregs->cr8 = 0;
    std::memset(sregs->interrupt_bitmap, 0, sizeof(sregs->interrupt_bitmap));
}

void initial_regs(kvm_regs *regs, uint64_t entry, uint64_t ram_size) {
    std::memset(regs, 0, sizeof(*regs));
    regs->rip = entry;
    regs->rsp = ram_size;
    regs->rdi = VMM_BOOT_INFO_ADDR;
    regs->rflags = 0x2;
}

}  // namespace vmm::x86
