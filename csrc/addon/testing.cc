// Test hooks: pure engine functions exposed to the test suite so that it can
// feed them made-up inputs. Nothing here touches /dev/kvm.
#include "addon/testing.h"

#include <linux/kvm.h>

#include <cstring>

#include "kvm/exit.h"

namespace vmm::addon {

namespace {

uint64_t get_u64(const Napi::Object &obj, const char *key) {
    Napi::Value value = obj.Get(key);
    if (value.IsBigInt()) {
        bool lossless = false;
        return value.As<Napi::BigInt>().Uint64Value(&lossless);
    }
    if (value.IsNumber()) {
        return static_cast<uint64_t>(value.As<Napi::Number>().Int64Value());
    }
    return 0;
}

// decodeExit({ reason, address, data, size, isWrite, count, suberror }):
// builds a kvm_run with those fields and returns decode_exit's result.
Napi::Value decode_exit_js(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) {
        Napi::TypeError::New(env, "expected an object").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Object in = info[0].As<Napi::Object>();
    kvm_run run;
    std::memset(&run, 0, sizeof(run));
    run.exit_reason = static_cast<uint32_t>(get_u64(in, "reason"));
    uint64_t address = get_u64(in, "address");
    uint64_t data = get_u64(in, "data");
    uint32_t size = static_cast<uint32_t>(get_u64(in, "size"));
    bool is_write = in.Get("isWrite").ToBoolean();
    switch (run.exit_reason) {
    case KVM_EXIT_MMIO:
        run.mmio.phys_addr = address;
        run.mmio.len = size;
        run.mmio.is_write = is_write ? 1 : 0;
        std::memcpy(run.mmio.data, &data, sizeof(data));
        break;
    case KVM_EXIT_IO:
        run.io.port = static_cast<uint16_t>(address);
        run.io.size = static_cast<uint8_t>(size);
        run.io.direction = is_write ? KVM_EXIT_IO_OUT : KVM_EXIT_IO_IN;
        run.io.count = static_cast<uint32_t>(get_u64(in, "count"));
        break;
    case KVM_EXIT_INTERNAL_ERROR:
        run.internal.suberror = static_cast<uint32_t>(get_u64(in, "suberror"));
        break;
    case KVM_EXIT_FAIL_ENTRY:
        run.fail_entry.hardware_entry_failure_reason = get_u64(in, "suberror");
        break;
    default:
        break;
    }
    DecodedExit exit = decode_exit(run);
    Napi::Object out = Napi::Object::New(env);
    out.Set("kind", exit_kind_name(exit.kind));
    out.Set("reasonName", exit_reason_name(exit.reason));
    out.Set("address", Napi::BigInt::New(env, exit.address));
    out.Set("value", Napi::BigInt::New(env, exit.value));
    out.Set("size", exit.size);
    out.Set("isWrite", exit.is_write);
    return out;
}

Napi::Object exit_reasons(Napi::Env env) {
    Napi::Object out = Napi::Object::New(env);
    out.Set("MMIO", KVM_EXIT_MMIO);
    out.Set("IO", KVM_EXIT_IO);
    out.Set("HLT", KVM_EXIT_HLT);
    out.Set("SHUTDOWN", KVM_EXIT_SHUTDOWN);
    out.Set("INTERNAL_ERROR", KVM_EXIT_INTERNAL_ERROR);
    out.Set("FAIL_ENTRY", KVM_EXIT_FAIL_ENTRY);
    out.Set("INTR", KVM_EXIT_INTR);
    out.Set("DEBUG", KVM_EXIT_DEBUG);
    out.Set("SYSTEM_EVENT", KVM_EXIT_SYSTEM_EVENT);
    return out;
}

}  // namespace

Napi::Object testing_exports(Napi::Env env) {
    Napi::Object out = Napi::Object::New(env);
    out.Set("decodeExit", Napi::Function::New(env, decode_exit_js));
    out.Set("exitReasons", exit_reasons(env));
    return out;
}

}  // namespace vmm::addon
