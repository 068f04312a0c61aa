// JS wrapper of a validated guest image.
#pragma once

#include <napi.h>

#include <memory>

#include "memory/image.h"

namespace vmm::addon {

class ImageWrap : public Napi::ObjectWrap<ImageWrap> {
public:
    static Napi::Function define(Napi::Env env);
    explicit ImageWrap(const Napi::CallbackInfo &info);

    const std::shared_ptr<Image> &image() const { return image_; }

    // Returns the ImageWrap in `value`, or nullptr after throwing a TypeError.
    static ImageWrap *unwrap(Napi::Env env, Napi::Value value);

private:
    Napi::Value entry(const Napi::CallbackInfo &info);
    Napi::Value load_end(const Napi::CallbackInfo &info);
    Napi::Value layout_bytes(const Napi::CallbackInfo &info);

    std::shared_ptr<Image> image_;
};

}  // namespace vmm::addon
