{
  "targets": [
    {
      "target_name": "vmm",
      "sources": [
        "csrc/addon/addon.cc",
        "csrc/addon/engine_wrap.cc",
        "csrc/addon/errors.cc",
        "csrc/addon/image_wrap.cc",
        "csrc/addon/snapshot_io.cc",
        "csrc/addon/snapshot_wrap.cc",
        "csrc/addon/testing.cc",
        "csrc/common/sha256.cc",
        "csrc/common/status.cc",
        "csrc/devices/balloon.cc",
        "csrc/devices/hypercalls.cc",
        "csrc/engine/engine.cc",
        "csrc/engine/hibernate.cc",
        "csrc/engine/lifecycle.cc",
        "csrc/engine/vcpu_loop.cc",
        "csrc/engine/warmup.cc",
        "csrc/kvm/context.cc",
        "csrc/kvm/exit.cc",
        "csrc/kvm/system.cc",
        "csrc/kvm/vcpu_state.cc",
        "csrc/kvm/x86_layout.cc",
        "csrc/memory/elf.cc",
        "csrc/memory/guest_memory.cc",
        "csrc/memory/image.cc",
        "csrc/memory/page_store.cc",
        "csrc/memory/snapshot.cc",
        "csrc/memory/snapshot_file.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "csrc",
        "csrc/guest/include"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-O2", "-g"],
      "conditions": [
        ["OS!='linux'", {"type": "none"}]
      ]
    }
  ]
}
