/*
 * config_json.h — just enough JSON for the bundled C plugins to read top-level members of the
 * config object that plugin_configure() receives (their YAML config as JSON). The object comes
 * from a YAML parser, so besides the keys a plugin reads it may hold anything, nested values
 * included, which is skipped. Header-only: each plugin gets its own static copy.
 */
#ifndef LOGLOOM_CONFIG_JSON_H
#define LOGLOOM_CONFIG_JSON_H

#include <stddef.h>
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

/* Points *value at the value of the top-level member `key` of the object `json`, or sets it to
 * NULL when there is none; the last of duplicate keys wins, as with Python's json. Keys are
 * compared as written, so an escaped spelling of `key` is not recognised. Returns -1 when json
 * is not an object. */
static int find_member(const char *json, const char *key, const char **value)
{
    size_t key_len = strlen(key);
    const char *p;

    *value = NULL;
    if (json == NULL)
        return -1;
    p = skip_ws(json);
    if (*p != '{')
        return -1;
    p = skip_ws(p + 1);
    if (*p == '}')
        return 0;
    for (;;) {
        const char *name = p + 1, *name_end;
        if (*p != '"' || (name_end = skip_string(p)) == NULL)
            return -1;
        p = skip_ws(name_end);
        if (*p != ':')
            return -1;
        p = skip_ws(p + 1);
        if ((size_t)(name_end - 1 - name) == key_len && memcmp(name, key, key_len) == 0)
            *value = p;
        if ((p = skip_value(p)) == NULL)
            return -1;
        p = skip_ws(p);
        if (*p == '}')
            return 0;
        if (*p != ',')
            return -1;
        p = skip_ws(p + 1);
    }
}

#endif /* LOGLOOM_CONFIG_JSON_H */
