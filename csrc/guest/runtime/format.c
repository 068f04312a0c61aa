/*
 * printf-style formatting for guests: vmm_snprintf() into memory and
 * vmm_printf() to the console. The supported subset is listed in vmm_guest.h.
 */
#include "vmm_guest.h"

#define FLAG_LEFT 0x01  /* '-' */
#define FLAG_ZERO 0x02  /* '0' */
#define FLAG_PLUS 0x04  /* '+' */
#define FLAG_SPACE 0x08 /* ' ' */
#define FLAG_ALT 0x10   /* '#' */

#define PRINTF_CHUNK 256

/* Destination of formatted bytes. A memory sink keeps the first `cap` bytes
 * and counts the rest. A console sink writes `buf` out each time it fills up. */
struct sink {
    char *buf;
    size_t cap;
    size_t pos;
    size_t total;
    int console;
    int64_t error; /* first failed console write, or 0 */
};

enum length {
    LENGTH_INT,
    LENGTH_CHAR,
    LENGTH_SHORT,
    LENGTH_LONG,
    LENGTH_LONG_LONG,
    LENGTH_SIZE,
    LENGTH_INTMAX,
    LENGTH_PTRDIFF,
};

struct spec {
    unsigned flags;
    int width;
    int precision; /* -1 when absent */
};

static void sink_flush(struct sink *sink)
{
    if (sink->pos == 0)
        return;

    int64_t ret = vmm_write(sink->buf, sink->pos);

    if (ret < 0 && sink->error == 0)
        sink->error = ret;
    sink->pos = 0;
}

static void put_char(struct sink *sink, char c)
{
    if (sink->pos == sink->cap) {
        if (!sink->console) {
            sink->total++;
            return;
        }
        sink_flush(sink);
    }
    sink->buf[sink->pos++] = c;
    sink->total++;
}

static void put_repeat(struct sink *sink, char c, int count)
{
    for (int i = 0; i < count; i++)
        put_char(sink, c);
}

static void put_bytes(struct sink *sink, const char *bytes, size_t len)
{
    for (size_t i = 0; i < len; i++)
        put_char(sink, bytes[i]);
}

/* Formats an integer conversion. `sign` is '-', '+', ' ' or 0, and `prefix`
 * is "0x", "0X" or "". */
static void put_number(struct sink *sink, const struct spec *spec, uint64_t value, unsigned base,
                       int upper, char sign, const char *prefix)
{
    const char *digit_chars = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char digits[24]; /* 22 octal digits cover 64 bits */
    int ndigits = 0;

    /* C prints no digits for a zero value with an explicit zero precision. */
    if (!(value == 0 && spec->precision == 0)) {
        do {
            digits[ndigits++] = digit_chars[value % base];
            value /= base;
        } while (value != 0);
    }

    int zeros = spec->precision > ndigits ? spec->precision - ndigits : 0;

    /* '#' with 'o' makes the first digit a zero. */
    if (base == 8 && (spec->flags & FLAG_ALT) && zeros == 0 &&
        (ndigits == 0 || digits[ndigits - 1] != '0'))
        zeros = 1;

    int prefix_len = (int)strlen(prefix);
    int len = (sign != 0) + prefix_len + zeros + ndigits;
    int pad = spec->width > len ? spec->width - len : 0;

    /* The '0' flag pads with zeros after the sign and prefix, unless '-' or a
     * precision is given. */
    if (!(spec->flags & FLAG_LEFT)) {
        if ((spec->flags & FLAG_ZERO) && spec->precision < 0)
            zeros += pad;
        else
            put_repeat(sink, ' ', pad);
        pad = 0;
    }
    if (sign != 0)
        put_char(sink, sign);
    put_bytes(sink, prefix, (size_t)prefix_len);
    put_repeat(sink, '0', zeros);
    while (ndigits > 0)
        put_char(sink, digits[--ndigits]);
    put_repeat(sink, ' ', pad);
}

/* Pads `len` bytes of `text` with spaces to the field width. */
static void put_field(struct sink *sink, const struct spec *spec, const char *text, size_t len)
{
    int pad = spec->width > 0 && (size_t)spec->width > len ? spec->width - (int)len : 0;

    if (!(spec->flags & FLAG_LEFT))
        put_repeat(sink, ' ', pad);
    put_bytes(sink, text, len);
    if (spec->flags & FLAG_LEFT)
        put_repeat(sink, ' ', pad);
}

/* Reads the next integer argument of the given length. Signed values are
 * sign-extended to 64 bits, unsigned values zero-extended. */
static uint64_t read_integer(enum length length, int is_signed, va_list *args)
{
    switch (length) {
    case LENGTH_CHAR: {
        int value = va_arg(*args, int);

        return is_signed ? (uint64_t)(int64_t)(signed char)value : (unsigned char)value;
    }
    case LENGTH_SHORT: {
        int value = va_arg(*args, int);

        return is_signed ? (uint64_t)(int64_t)(short)value : (unsigned short)value;
    }
    case LENGTH_LONG:
    case LENGTH_LONG_LONG:
    case LENGTH_SIZE:
    case LENGTH_INTMAX:
    case LENGTH_PTRDIFF:
        /* All of these are 64 bits wide on x86-64. */
        return va_arg(*args, uint64_t);
    case LENGTH_INT:
    default: {
        unsigned value = va_arg(*args, unsigned);

        return is_signed ? (uint64_t)(int64_t)(int)value : value;
    }
    }
}

/* Parses a decimal field of the conversion at *cursor. */
static int parse_decimal(const char **cursor)
{
    int value = 0;

    while (**cursor >= '0' && **cursor <= '9') {
        if (value < 100000000)
            value = value * 10 + (**cursor - '0');
        (*cursor)++;
    }
    return value;
}

/* Parses flags, width, precision and length of the conversion after '%'. */
static const char *parse_spec(const char *cursor, struct spec *spec, enum length *length,
                              va_list *args)
{
    spec->flags = 0;
    spec->width = 0;
    spec->precision = -1;
    for (;; cursor++) {
        if (*cursor == '-')
            spec->flags |= FLAG_LEFT;
        else if (*cursor == '0')
            spec->flags |= FLAG_ZERO;
        else if (*cursor == '+')
            spec->flags |= FLAG_PLUS;
        else if (*cursor == ' ')
            spec->flags |= FLAG_SPACE;
        else if (*cursor == '#')
            spec->flags |= FLAG_ALT;
        else
            break;
    }

    if (*cursor == '*') {
        int width = va_arg(*args, int);

        cursor++;
        /* A negative '*' width means '-' with the absolute width. */
        if (width < 0) {
            spec->flags |= FLAG_LEFT;
            width = width < -100000000 ? 100000000 : -width;
        }
        spec->width = width;
    } else {
        spec->width = parse_decimal(&cursor);
    }

    if (*cursor == '.') {
        cursor++;
        if (*cursor == '*') {
            int precision = va_arg(*args, int);

            cursor++;
            /* A negative '*' precision counts as absent. */
            spec->precision = precision < 0 ? -1 : precision;
        } else {
            spec->precision = parse_decimal(&cursor);
        }
    }

    *length = LENGTH_INT;
    if (cursor[0] == 'h' && cursor[1] == 'h') {
        *length = LENGTH_CHAR;
        cursor += 2;
    } else if (cursor[0] == 'l' && cursor[1] == 'l') {
        *length = LENGTH_LONG_LONG;
        cursor += 2;
    } else if (*cursor == 'h') {
        *length = LENGTH_SHORT;
        cursor++;
    } else if (*cursor == 'l') {
        *length = LENGTH_LONG;
        cursor++;
    } else if (*cursor == 'z') {
        *length = LENGTH_SIZE;
        cursor++;
    } else if (*cursor == 'j') {
        *length = LENGTH_INTMAX;
        cursor++;
    } else if (*cursor == 't') {
        *length = LENGTH_PTRDIFF;
        cursor++;
    }
    return cursor;
}

static void format(struct sink *sink, const char *fmt, va_list *args)
{
    const char *cursor = fmt;

    while (*cursor != '\0') {
        if (*cursor != '%') {
            put_char(sink, *cursor++);
            continue;
        }

        const char *start = cursor;
        struct spec spec;
        enum length length;

        cursor = parse_spec(cursor + 1, &spec, &length, args);

        char conversion = *cursor;

        switch (conversion) {
        case 'd':
        case 'i':
        case 'u':
        case 'o':
        case 'x':
        case 'X': {
            int is_signed = conversion == 'd' || conversion == 'i';
            uint64_t value = read_integer(length, is_signed, args);
            char sign = 0;
            const char *prefix = "";

            if (is_signed) {
                /* Negating in unsigned arithmetic handles INT64_MIN. */
                if ((int64_t)value < 0) {
                    sign = '-';
                    value = 0 - value;
                } else if (spec.flags & FLAG_PLUS) {
                    sign = '+';
                } else if (spec.flags & FLAG_SPACE) {
                    sign = ' ';
                }
            }
            if ((conversion == 'x' || conversion == 'X') && (spec.flags & FLAG_ALT) && value != 0)
                prefix = conversion == 'X' ? "0X" : "0x";

            unsigned base = 10;

            if (conversion == 'o')
                base = 8;
            else if (conversion == 'x' || conversion == 'X')
                base = 16;

            put_number(sink, &spec, value, base, conversion == 'X', sign, prefix);
            break;
        }
        case 'p':
            put_number(sink, &spec, (uintptr_t)va_arg(*args, void *), 16, 0, 0, "0x");
            break;
        case 'c': {
            char c = (char)va_arg(*args, int);

            put_field(sink, &spec, &c, 1);
            break;
        }
        case 's': {
            const char *text = va_arg(*args, const char *);
            size_t len = 0;

            if (text == NULL)
                text = "(null)";
            while (text[len] != '\0' && (spec.precision < 0 || len < (size_t)spec.precision))
                len++;
            put_field(sink, &spec, text, len);
            break;
        }
        case '%':
            put_char(sink, '%');
            break;
        case '\0':
            /* The format ends inside a conversion: print it as text. */
            put_bytes(sink, start, (size_t)(cursor - start));
            return;
        default:
            /* Unsupported conversions, such as %f, print as text. */
            put_bytes(sink, start, (size_t)(cursor + 1 - start));
            break;
        }
        cursor++;
    }
}

static int clamp_to_int(size_t value)
{
    return value > 0x7fffffff ? 0x7fffffff : (int)value;
}

int vmm_vsnprintf(char *buf, size_t size, const char *fmt, va_list args)
{
    struct sink sink = {
        .buf = buf,
        .cap = size > 0 ? size - 1 : 0,
    };
    va_list copy;

    va_copy(copy, args);
    format(&sink, fmt, &copy);
    va_end(copy);
    if (size > 0)
        buf[sink.pos] = '\0';
    return clamp_to_int(sink.total);
}

int vmm_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list args;

    va_start(args, fmt);
    int len = vmm_vsnprintf(buf, size, fmt, args);

    va_end(args);
    return len;
}

int vmm_vprintf(const char *fmt, va_list args)
{
    char chunk[PRINTF_CHUNK];
    struct sink sink = {
        .buf = chunk,
        .cap = sizeof(chunk),
        .console = 1,
    };
    va_list copy;

    va_copy(copy, args);
    format(&sink, fmt, &copy);
    va_end(copy);
    sink_flush(&sink);
    return sink.error != 0 ? (int)sink.error : clamp_to_int(sink.total);
}

int vmm_printf(const char *fmt, ...)
{
    va_list args;

    va_start(args, fmt);
    int len = vmm_vprintf(fmt, args);

    va_end(args);
    return len;
}
