#include "addon/image_wrap.h"

#include "addon/addon.h"
#include "addon/errors.h"

namespace vmm::addon {

Napi::Function ImageWrap::define(Napi::Env env) {
    return DefineClass(env, "NativeImage",
                       {
                           InstanceAccessor<&ImageWrap::entry>("entry"),
                           InstanceAccessor<&ImageWrap::load_end>("loadEnd"),
                           InstanceMethod<&ImageWrap::layout_bytes>("layoutBytes"),
                       });
}

// new NativeImage(bytes: Uint8Array): validates the ELF file in `bytes`.
ImageWrap::ImageWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<ImageWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
        Napi::TypeError::New(env, "image bytes must be a Uint8Array").ThrowAsJavaScriptException();
        return;
    }
    Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
    Status status = Image::parse(bytes.Data(), bytes.ByteLength(), &image_);
    if (!status.ok()) {
        to_js_error(env, status).ThrowAsJavaScriptException();
    }
}

ImageWrap *ImageWrap::unwrap(Napi::Env env, Napi::Value value) {
    AddonData *data = env.GetInstanceData<AddonData>();
    if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(data->image_class.Value())) {
        Napi::TypeError::New(env, "expected a NativeImage").ThrowAsJavaScriptException();
        return nullptr;
    }
    return ImageWrap::Unwrap(value.As<Napi::Object>());
}

Napi::Value ImageWrap::entry(const Napi::CallbackInfo &info) {
    return Napi::Number::New(info.Env(), static_cast<double>(image_ ? image_->entry() : 0));
}

Napi::Value ImageWrap::load_end(const Napi::CallbackInfo &info) {
    return Napi::Number::New(info.Env(), static_cast<double>(image_ ? image_->load_end() : 0));
}

Napi::Value ImageWrap::layout_bytes(const Napi::CallbackInfo &info) {
    return Napi::Number::New(info.Env(), static_cast<double>(image_ ? image_->layout_bytes() : 0));
}

}  // namespace vmm::addon
