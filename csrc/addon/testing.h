// Test hooks exported as `testing` by the addon.
#pragma once

#include <napi.h>

namespace vmm::addon {

Napi::Object testing_exports(Napi::Env env);

}  // namespace vmm::addon
