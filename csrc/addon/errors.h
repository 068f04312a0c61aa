// Conversion of engine Status values into JavaScript errors.
#pragma once

#include <napi.h>

#include "common/status.h"

namespace vmm::addon {

// A JS Error with `code`, and `errno` and `syscall` when a syscall failed.
// The TypeScript layer rewraps it as a VMMError.
Napi::Error to_js_error(Napi::Env env, const Status &status);

// Plain object with the same fields, for errors delivered in events.
Napi::Object to_js_error_object(Napi::Env env, const Status &status);

}  // namespace vmm::addon
