// Error values passed between the engine's layers and turned into JS errors
// by the addon. The engine never throws across its own API.
#pragma once

#include <string>
#include <utility>

namespace vmm {

// A failure with a documented ERR_* code. `err` and `syscall` are set when a
// system call failed; `err` is the positive errno value.
struct Status {
    std::string code;
    std::string message;
    int err = 0;
    std::string syscall;

    bool ok() const { return code.empty(); }

    static Status success() { return Status{}; }
    static Status failure(std::string code, std::string message) {
        Status s;
        s.code = std::move(code);
        s.message = std::move(message);
        return s;
    }
    static Status from_errno(std::string code, std::string message, int err,
                             std::string syscall) {
        Status s = failure(std::move(code), std::move(message));
        s.err = err;
        s.syscall = std::move(syscall);
        return s;
    }
};

// Formats like printf into a std::string; used for error messages.
std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace vmm
