#include "kvm/x86_layout.h"

#include <cstring>

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

constexpr uint64_t kTable = kPresent | kWritable | kUser | kAccessed;
constexpr uint64_t k2MiB = 2ull << 20;
constexpr uint64_t k1GiB = 1ull << 30;

void put64(uint8_t *low, uint64_t gpa, uint64_t value) { std::memcpy(low + gpa, &value, 8); }

void build_page_tables(uint8_t *low, uint64_t ram_size) {
    put64(low, kPml4, kPdpt | kTable);
    for (uint64_t gib = 0; gib < 4; gib++) {
        put64(low, kPdpt + gib * 8, (kPd0 + gib * VMM_PAGE_SIZE) | kTable);
    }

    // The first 2 MiB: page 0 stays unmapped so that null pointers fault,
    // the supervisor pages lack the user bit, the boot information page is
    // read-only, and the rest of the reserved area is unmapped.
    put64(low, kPd0, kPtLow | kTable);
    for (uint64_t page = 1; page < kSupervisorEnd / VMM_PAGE_SIZE; page++) {
        put64(low, kPtLow + page * 8,
              (page * VMM_PAGE_SIZE) | kPresent | kWritable | kAccessed | kDirty);
    }
    put64(low, kPtLow + (VMM_BOOT_INFO_ADDR / VMM_PAGE_SIZE) * 8,
          VMM_BOOT_INFO_ADDR | kPresent | kUser | kAccessed);
    for (uint64_t addr = VMM_RESERVED_END; addr < k2MiB; addr += VMM_PAGE_SIZE) {
        put64(low, kPtLow + (addr / VMM_PAGE_SIZE) * 8,
              addr | kPresent | kWritable | kUser | kAccessed | kDirty);
    }

    // The rest of RAM in 2 MiB pages.
    for (uint64_t addr = k2MiB; addr < ram_size; addr += k2MiB) {
        uint64_t pd = kPd0 + (addr / k1GiB) * VMM_PAGE_SIZE;
        uint64_t index = (addr % k1GiB) / k2MiB;
        put64(low, pd + index * 8,
              addr | kPresent | kWritable | kUser | kAccessed | kDirty | kLarge);
    }

    // The doorbell page, in the last 2 MiB below 4 GiB, above any RAM.
    uint64_t doorbell_pd = kPd0 + 3 * VMM_PAGE_SIZE;
    put64(low, doorbell_pd + 511 * 8, kPtDoorbell | kTable);
    put64(low, kPtDoorbell + 511 * 8,
          VMM_DOORBELL_ADDR | kPresent | kWritable | kUser | kAccessed | kDirty);
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

void build_supervisor_area(uint8_t *low, uint64_t ram_size) {
    std::memset(low, 0, kSupervisorEnd);
    build_page_tables(low, ram_size);
    build_gdt(low);
    build_idt_and_stubs(low);
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

    // CR0: PE, MP, ET, NE, WP, AM, PG. CR4: PAE, OSFXSR, OSXMMEXCPT (SSE in
    // user mode). EFER: LME, LMA, NXE.
    sregs->cr0 = 0x80050033ull;
    sregs->cr3 = kPml4;
    sregs->cr4 = 0x620ull;
    sregs->efer = 0xD00ull;
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
