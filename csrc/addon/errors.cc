#include "addon/errors.h"

namespace vmm::addon {

Napi::Error to_js_error(Napi::Env env, const Status &status) {
    Napi::Error error = Napi::Error::New(env, status.message);
    error.Set("code", Napi::String::New(env, status.code));
    if (status.err != 0) {
        error.Set("errno", Napi::Number::New(env, status.err));
        error.Set("syscall", Napi::String::New(env, status.syscall));
    }
    return error;
}

Napi::Object to_js_error_object(Napi::Env env, const Status &status) {
    Napi::Object out = Napi::Object::New(env);
    out.Set("code", status.code);
    out.Set("message", status.message);
    if (status.err != 0) {
        out.Set("errno", status.err);
        out.Set("syscall", status.syscall);
    }
    return out;
}

}  // namespace vmm::addon
