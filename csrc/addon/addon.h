// Per-environment state of the addon.
#pragma once

#include <napi.h>

#include <memory>

#include "kvm/system.h"

namespace vmm::addon {

struct AddonData {
    Napi::FunctionReference image_class;
    Napi::FunctionReference engine_class;
    Napi::FunctionReference snapshot_class;
};

// Returns the process-wide /dev/kvm handle, opening it on first use.
Status shared_kvm(std::shared_ptr<KvmSystem> *out);

}  // namespace vmm::addon
