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

/* --- Reading the config: find_member() and friends. */
#include "config_json.h"

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
