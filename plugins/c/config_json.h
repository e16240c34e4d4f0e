/*
 * config_json.h — just enough JSON for the bundled C plugins to read top-level members of the
 * config object that plugin_configure() receives (their YAML config as JSON), or of an entry's
 * JSON. The object comes from a YAML parser, so besides the keys a plugin reads it may hold
 * anything, nested values included, which is skipped. Header-only: each plugin gets its own
 * static copy; the readers a plugin may not use are static inline, so they cost it nothing.
 */
#ifndef LOGLOOM_CONFIG_JSON_H
#define LOGLOOM_CONFIG_JSON_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

/* p is at the opening quote; returns what follows the closing one, NULL if there is none. */
static const char *skip_string(const char *p)
{
    for (p++; *p != '"'; p++) {
        if (*p == '\0' || (*p == '\\' && *++p == '\0'))
            return NULL;
    }
    return p + 1;
}

/* Brackets are counted, not matched: the config comes from a YAML parser, not from a person. */
static const char *skip_container(const char *p)
{
    size_t depth = 0;
    do {
        if (*p == '"') {
            if ((p = skip_string(p)) == NULL)
                return NULL;
            continue;
        }
        if (*p == '\0')
            return NULL;
        if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']')
            depth--;
        p++;
    } while (depth > 0);
    return p;
}

/* Numbers, true, false and null. */
static const char *skip_literal(const char *p)
{
    const char *start = p;
    while (*p != '\0' && strchr(",}] \t\r\n", *p) == NULL)
        p++;
    return p == start ? NULL : p;
}

static const char *skip_value(const char *p)
{
    if (*p == '"')
        return skip_string(p);
    if (*p == '{' || *p == '[')
        return skip_container(p);
    return skip_literal(p);
}

/* Calls visit(name, name_len, value, ctx) for each member of the object `json`, in order, with
 * name pointing at the key as written (no escapes decoded, not NUL-terminated) and value at its
 * value; stops at the first visit that returns non-zero and returns that. -1 when json is not
 * an object, so visitors that fail should return a positive number. */
static inline int for_each_member(const char *json,
                                  int (*visit)(const char *name, size_t name_len,
                                               const char *value, void *ctx),
                                  void *ctx)
{
    const char *p;

    if (json == NULL || *(p = skip_ws(json)) != '{')
        return -1;
    p = skip_ws(p + 1);
    if (*p == '}')
        return 0;
    for (;;) {
        const char *name = p + 1, *name_end, *value;
        int stop;
        if (*p != '"' || (name_end = skip_string(p)) == NULL)
            return -1;
        p = skip_ws(name_end);
        if (*p != ':')
            return -1;
        value = p = skip_ws(p + 1);
        if ((p = skip_value(p)) == NULL)
            return -1;
        if ((stop = visit(name, (size_t)(name_end - 1 - name), value, ctx)) != 0)
            return stop;
        p = skip_ws(p);
        if (*p == '}')
            return 0;
        if (*p != ',')
            return -1;
        p = skip_ws(p + 1);
    }
}

struct wanted_member {
    const char *key;
    size_t key_len;
    const char **value;
};

static int note_wanted_member(const char *name, size_t name_len, const char *value, void *ctx)
{
    struct wanted_member *wanted = ctx;
    if (name_len == wanted->key_len && memcmp(name, wanted->key, name_len) == 0)
        *wanted->value = value; /* and go on: the last of duplicate keys wins */
    return 0;
}

/* Points *value at the value of the top-level member `key` of the object `json`, or sets it to
 * NULL when there is none; the last of duplicate keys wins, as with Python's json. Keys are
 * compared as written, so an escaped spelling of `key` is not recognised. Returns -1 when json
 * is not an object. */
static int find_member(const char *json, const char *key, const char **value)
{
    struct wanted_member wanted = {key, strlen(key), value};
    *value = NULL;
    return for_each_member(json, note_wanted_member, &wanted) < 0 ? -1 : 0;
}

/* Four hex digits of a \u escape; -1 if they are not. */
static inline long hex4(const char *p)
{
    long code = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int digit = c >= '0' && c <= '9' ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                  : -1;
        if (digit < 0)
            return -1;
        code = code * 16 + digit;
    }
    return code;
}

/* The code point of the \u escape at p (a surrogate pair taking two), advancing *p past it;
 * -1 for a malformed escape or a lone surrogate. */
static inline long unicode_escape(const char **p)
{
    long high = hex4(*p + 2), low;

    *p += 6;
    if (high < 0xD800 || high > 0xDFFF)
        return high;
    if (high > 0xDBFF || (*p)[0] != '\\' || (*p)[1] != 'u')
        return -1;
    low = hex4(*p + 2);
    if (low < 0xDC00 || low > 0xDFFF)
        return -1;
    *p += 6;
    return 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
}

static inline char *put_utf8(char *o, long code)
{
    if (code < 0x80) {
        *o++ = (char)code;
    } else if (code < 0x800) {
        *o++ = (char)(0xC0 | code >> 6);
        *o++ = (char)(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
        *o++ = (char)(0xE0 | code >> 12);
        *o++ = (char)(0x80 | (code >> 6 & 0x3F));
        *o++ = (char)(0x80 | (code & 0x3F));
    } else {
        *o++ = (char)(0xF0 | code >> 18);
        *o++ = (char)(0x80 | (code >> 12 & 0x3F));
        *o++ = (char)(0x80 | (code >> 6 & 0x3F));
        *o++ = (char)(0x80 | (code & 0x3F));
    }
    return o;
}

/* The character of a one-letter escape such as \n; -1 for an unknown one. */
static inline long simple_escape(char letter)
{
    switch (letter) {
    case '"': case '\\': case '/': return letter;
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    default: return -1;
    }
}

/* Decodes the JSON string at p into buf (cap bytes, NUL-terminated). Python's json writes
 * non-ASCII as \u escapes, so text may well arrive escaped. -1 if p is not a string, does not
 * fit, or holds a NUL, which no C string can. Decoding only shortens, so a buffer of
 * JSON_STRING_ROOM(n) bytes fits any string written in n bytes, quotes included. */
#define JSON_STRING_ROOM(n) ((n) + 3)
static inline int read_string(const char *p, char *buf, size_t cap)
{
    char *o = buf, *end = buf + cap;

    if (*p++ != '"')
        return -1;
    while (*p != '"') {
        long code;
        if (*p == '\0' || end - o < 5) /* 5: the longest UTF-8 sequence and the NUL */
            return -1;
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        if (p[1] == 'u') {
            code = unicode_escape(&p);
        } else {
            code = simple_escape(p[1]);
            p += 2;
        }
        if (code <= 0)
            return -1;
        o = put_utf8(o, code);
    }
    *o = '\0';
    return 0;
}

static inline int read_bool(const char *p, bool *flag)
{
    const char *end = skip_literal(p);
    size_t len = end == NULL ? 0 : (size_t)(end - p);

    if (len == 4 && memcmp(p, "true", 4) == 0)
        *flag = true;
    else if (len == 5 && memcmp(p, "false", 5) == 0)
        *flag = false;
    else
        return -1;
    return 0;
}

/* A JSON integer (no fraction, no exponent) that fits a long; -1 if p is not one. */
static inline int read_long(const char *p, long *number)
{
    const char *end = skip_literal(p);
    char *parsed;
    long value;

    if (end == NULL || (*p != '-' && (*p < '0' || *p > '9')))
        return -1;
    errno = 0;
    value = strtol(p, &parsed, 10);
    if (parsed != end || errno != 0)
        return -1;
    *number = value;
    return 0;
}

#endif /* LOGLOOM_CONFIG_JSON_H */
