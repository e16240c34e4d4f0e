/*
 * filter_severity — keeps entries at or above a minimum level; the C twin of
 * plugins/python/log_filter_severity.py.
 *
 * Config (filter_severity.yaml): min_level, one of DEBUG, INFO, WARN, ERROR, FATAL in any case;
 * default INFO. An entry whose level is none of the five counts as INFO, as in the design.
 */
#include <stdio.h>
#include <string.h>

#include "logloom_plugin.h"

enum { RANK_DEBUG, RANK_INFO, RANK_WARN, RANK_ERROR, RANK_FATAL, RANK_UNKNOWN = -1 };

/* Written only by plugin_configure, which runs before any entry is processed. */
static int min_rank = RANK_INFO;

/* Entry levels are upper case by contract, so an exact match is enough; switching on the first
 * character keeps this to one short comparison per entry. */
static int level_rank(const char *level)
{
    switch (level[0]) {
    case 'D': return strcmp(level + 1, "EBUG") == 0 ? RANK_DEBUG : RANK_UNKNOWN;
    case 'I': return strcmp(level + 1, "NFO") == 0 ? RANK_INFO : RANK_UNKNOWN;
    case 'W': return strcmp(level + 1, "ARN") == 0 ? RANK_WARN : RANK_UNKNOWN;
    case 'E': return strcmp(level + 1, "RROR") == 0 ? RANK_ERROR : RANK_UNKNOWN;
    case 'F': return strcmp(level + 1, "ATAL") == 0 ? RANK_FATAL : RANK_UNKNOWN;
    default: return RANK_UNKNOWN;
    }
}

static int keep(const log_entry_t *entry)
{
    int rank = entry->level == NULL ? RANK_UNKNOWN : level_rank(entry->level);
    if (rank == RANK_UNKNOWN)
        rank = RANK_INFO;
    return rank >= min_rank ? LOGLOOM_KEEP : LOGLOOM_DROP;
}

/* --- Just enough JSON to read one top-level member of the config object. The object comes from
 * YAML, so besides min_level it may hold anything, nested values included, which is skipped. */

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

/* The rank of a level named in any case. The name is copied upper-cased into a buffer one byte
 * longer than the longest level, so a longer name, or one spelled with escapes, is unknown. */
static int parse_level(const char *json_string)
{
    char name[6];
    size_t len = 0;
    const char *p = json_string + 1;

    if (*json_string != '"')
        return RANK_UNKNOWN;
    for (; *p != '"'; p++) {
        if (*p == '\0' || *p == '\\' || len == sizeof name - 1)
            return RANK_UNKNOWN;
        name[len++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
    }
    name[len] = '\0';
    return level_rank(name);
}

/* --- The plugin ABI. */

const plugin_info_t *plugin_info(void)
{
    static const plugin_info_t info = {
        .name = "filter_severity",
        .version = "1.0.0",
        .author = "Logloom Team",
        .type = "filter",
        .capability = "text,batch",
        .mode = "sync",
    };
    return &info;
}

int plugin_configure(const char *config_json)
{
    const char *value;
    int rank = RANK_INFO;

    if (find_member(config_json, "min_level", &value) < 0) {
        fprintf(stderr, "filter_severity: the config is not a well-formed JSON object\n");
        return -1;
    }
    if (value != NULL && (rank = parse_level(value)) == RANK_UNKNOWN) {
        fprintf(stderr, "filter_severity: min_level must be DEBUG, INFO, WARN, ERROR or FATAL\n");
        return -1;
    }
    min_rank = rank;
    return 0;
}

int plugin_init(void)
{
    return 0;
}

int plugin_process(const log_entry_t *entry)
{
    return keep(entry);
}

int plugin_process_batch(const log_entry_t *entries, size_t count, int *results)
{
    for (size_t i = 0; i < count; i++)
        results[i] = keep(&entries[i]);
    return 0;
}

void plugin_shutdown(void)
{
}
