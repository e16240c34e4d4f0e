/*
 * logloom_plugin.h — the C plugin ABI of Logloom (CONTRACT §4).
 *
 * Build a plugin against it with:
 *     cc $(logloom plugins cflags) -shared -fPIC -o filter_mine.so filter_mine.c
 *
 * A plugin is a shared library exporting plain C functions. Required: plugin_init,
 * plugin_process, plugin_shutdown; a lang plugin exports plugin_resolve, and then needs no
 * plugin_process. Optional: plugin_info, plugin_process_batch, plugin_configure.
 *
 * Every string Logloom hands a plugin is UTF-8, NUL-terminated and read-only, and stays valid
 * only for the duration of the call: copy what you keep. Entries are never changed by plugins.
 */
#ifndef LOGLOOM_PLUGIN_H
#define LOGLOOM_PLUGIN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOGLOOM_PLUGIN_API_VERSION 1

/* One log entry (CONTRACT §1). Missing fields are "" except lang_key, which is NULL. */
typedef struct log_entry {
    const char *timestamp; /* RFC 3339, e.g. "2025-04-30T12:00:00Z" */
    const char *level;     /* DEBUG | INFO | WARN | ERROR | FATAL */
    const char *module;
    const char *message;
    const char *lang_key;  /* NULL when absent */
    const char *json;      /* the whole entry as a JSON object, extra fields included */
} log_entry_t;

/* What a plugin says about itself; every pointer must stay valid while the library is loaded. */
typedef struct plugin_info {
    const char *name, *version, *author;
    const char *type;       /* "filter" | "sink" | "ai" | "lang" */
    const char *capability; /* comma separated, e.g. "json,batch" */
    const char *mode;       /* "sync" | "async" */
} plugin_info_t;

/* Result codes. A filter answers 1 (keep) or 0 (drop); a sink 0 (delivered). Anything below
 * zero (a sink: anything but 0) is an error: the entry goes to the dead-letter queue. A sink
 * answers LOGLOOM_UNAVAILABLE when its destination is down, not the entry at fault: the sink
 * stage then holds the entry, pending and in order, and retries it until the destination is
 * back, without spending attempts or dead-lettering it. */
#define LOGLOOM_KEEP 1
#define LOGLOOM_DROP 0
#define LOGLOOM_OK 0
#define LOGLOOM_ERROR (-1)
#define LOGLOOM_UNAVAILABLE (-2)

int plugin_init(void);                        /* 0 = ready */
int plugin_process(const log_entry_t *entry); /* per entry, codes above */
void plugin_shutdown(void);

/* Optional. Without plugin_info, name and type come from the file name (filter_*.so, sink_*.so,
 * lib<name>.so) or from a <name>.yaml beside the library. */
const plugin_info_t *plugin_info(void);

/* Optional: a whole batch in one call; results[i] gets entry i's code. Returning < 0 fails the
 * whole batch. Used instead of plugin_process when exported. */
int plugin_process_batch(const log_entry_t *entries, size_t count, int *results);

/* Optional: the plugin's YAML config as a JSON object, called once before plugin_init. */
int plugin_configure(const char *config_json);

/* lang plugins: the text for lang_key in locale (NULL = default locale), or NULL when unknown.
 * The string stays valid until the next call on the same thread. Logloom always names the
 * locale and walks the fallback chain itself (zh-TW, then zh, then the default): answer for
 * exactly that locale. The text may hold {name} placeholders; Logloom fills them from the
 * entry's params, and caches the text per key and locale until the plugin is reloaded. */
const char *plugin_resolve(const char *lang_key, const char *locale);

#ifdef __cplusplus
}
#endif

#endif /* LOGLOOM_PLUGIN_H */
