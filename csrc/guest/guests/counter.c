/*
 * Replies to every message with
 *     {"id":<vm id>,"count":<calls served, this one included>,"payload":"<request>"}
 * The request bytes are escaped as a JSON string: '"' and '\' get a backslash
 * and bytes below 0x20 become \u00XX. Other bytes pass through unchanged, so
 * the reply is valid JSON whenever the request is valid UTF-8.
 *
 * When the escaped payload does not fit in the reply, the reply is
 * {"id":<vm id>,"count":<count>,"error":"payload too long"} instead.
 */
#include "vmm_guest.h"

static uint64_t calls_served;

/* Bounded writer over the reply buffer. `len` keeps growing past `cap`, so
 * `len > cap` after writing means the output did not fit. */
struct writer {
    uint8_t *buf;
    size_t cap;
    size_t len;
};

static void write_byte(struct writer *out, uint8_t byte)
{
    if (out->len < out->cap)
        out->buf[out->len] = byte;
    out->len++;
}

static void write_text(struct writer *out, const char *text)
{
    while (*text != '\0')
        write_byte(out, (uint8_t)*text++);
}

static void write_json_string_body(struct writer *out, const uint8_t *bytes, size_t len)
{
    static const char hex[] = "0123456789abcdef";

    for (size_t i = 0; i < len; i++) {
        uint8_t byte = bytes[i];

        if (byte == '"' || byte == '\\') {
            write_byte(out, '\\');
            write_byte(out, byte);
        } else if (byte < 0x20) {
            write_text(out, "\\u00");
            write_byte(out, (uint8_t)hex[byte >> 4]);
            write_byte(out, (uint8_t)hex[byte & 0xf]);
        } else {
            write_byte(out, byte);
        }
    }
}

/* Writes `{"id":<id>,"count":<count>,` and returns false when it does not fit. */
static int write_prefix(struct writer *out, uint64_t count)
{
    char prefix[80];
    int len = vmm_snprintf(prefix, sizeof(prefix), "{\"id\":%llu,\"count\":%llu,",
                           (unsigned long long)vmm_vm_id(), (unsigned long long)count);

    write_text(out, prefix);
    return len > 0 && out->len <= out->cap;
}

static int64_t count_request(const uint8_t *req, size_t len, uint8_t *reply, size_t cap)
{
    struct writer out = {.buf = reply, .cap = cap, .len = 0};

    calls_served++;
    if (!write_prefix(&out, calls_served))
        return -1;
    write_text(&out, "\"payload\":\"");
    write_json_string_body(&out, req, len);
    write_text(&out, "\"}");
    if (out.len <= out.cap)
        return (int64_t)out.len;

    out.len = 0;
    write_prefix(&out, calls_served);
    write_text(&out, "\"error\":\"payload too long\"}");
    return out.len <= out.cap ? (int64_t)out.len : -1;
}

int main(void)
{
    vmm_serve(count_request);
}
