/*
 * sink_file — appends each entry's JSON, one object a line, to a file.
 *
 * Config (sink_file.yaml): path, the file (default logs/logloom-c.jsonl, relative to the working
 * directory; its parent directory is created if missing, one level only); fsync, true to fsync
 * after every batch (default false).
 *
 * Each batch goes to the file in one write, so several sink workers can share the file.
 *
 * One entry is one line: an entry's JSON is written as it came, and JSON allows a raw CR or LF
 * between its tokens, which would split it over several lines (and a nested object alone on
 * one of them would read as an entry of its own). Such bytes are written as spaces: outside
 * strings JSON treats them as whitespace, so the entry still means the same (design §7.4).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "logloom_plugin.h"

#define DEFAULT_PATH "logs/logloom-c.jsonl"
#define PATH_CAP 4096

/* Written by plugin_configure, before plugin_init opens the file. */
static char path[PATH_CAP] = DEFAULT_PATH;
static bool sync_to_disk = false;

static int fd = -1;
/* Grown to the largest batch so far and reused: one write call per batch needs it whole. */
static char *batch_buf;
static size_t batch_cap;
/* A failed write ended mid-line: the next batch starts with a newline, to keep its first line. */
static bool torn;

/* --- Reading the config: find_member(), read_string() and read_bool(). */
#include "config_json.h"

/* --- Writing. */

/* mkdir of the path's directory, when it has one; an existing directory is fine. */
static int make_parent_dir(void)
{
    char dir[PATH_CAP];
    const char *slash = strrchr(path, '/');

    if (slash == NULL || slash == path)
        return 0;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
    if (mkdir(dir, 0777) == 0 || errno == EEXIST)
        return 0;
    fprintf(stderr, "sink_file: cannot create directory %s: %s\n", dir, strerror(errno));
    return -1;
}

/* Copies one entry's JSON to o as a single line: every control byte becomes a space. Valid JSON
 * has them only as whitespace between tokens (inside strings they are escaped), so this changes
 * nothing but the line breaks. */
static char *put_one_line(char *o, const char *json, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)json[i];
        o[i] = c < 0x20 ? ' ' : (char)c;
    }
    return o + n;
}

/* The batch as one run of lines in batch_buf, after a newline that ends a line torn by an earlier
 * failed write; its length, 0 when the buffer cannot grow. */
static size_t fill_batch(const log_entry_t *entries, size_t count)
{
    size_t len = torn ? 1 : 0;
    char *o;

    for (size_t i = 0; i < count; i++)
        len += strlen(entries[i].json) + 1;
    if (len > batch_cap) {
        char *grown = realloc(batch_buf, len);
        if (grown == NULL)
            return 0;
        batch_buf = grown;
        batch_cap = len;
    }
    o = batch_buf;
    if (torn)
        *o++ = '\n';
    for (size_t i = 0; i < count; i++) {
        o = put_one_line(o, entries[i].json, strlen(entries[i].json));
        *o++ = '\n';
    }
    return len;
}

/* One write call in all but rare cases (a full disk, a signal): an O_APPEND write lands whole at
 * the end of the file, so lines of other workers appending to it never come inside ours.
 * Returns how many bytes were written, with errno telling why when short. */
static size_t write_all(const char *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, buf + done, len - done);
        if (n > 0)
            done += (size_t)n;
        else if (n == 0 || errno != EINTR)
            break;
    }
    return done;
}

/* results[i] = 0 for the entries wholly among the first `written` bytes of the batch. */
static void mark_written(const log_entry_t *entries, size_t count, int *results, size_t written)
{
    size_t end = torn ? 1 : 0;
    for (size_t i = 0; i < count; i++) {
        end += strlen(entries[i].json) + 1;
        results[i] = end <= written ? LOGLOOM_OK : LOGLOOM_ERROR;
    }
}

/* --- The plugin ABI. */

const plugin_info_t *plugin_info(void)
{
    static const plugin_info_t info = {
        .name = "sink_file",
        .version = "1.0.0",
        .author = "Logloom Team",
        .type = "sink",
        .capability = "json,batch",
        .mode = "sync",
    };
    return &info;
}

/* Nothing changes unless the whole config is valid. */
int plugin_configure(const char *config_json)
{
    char new_path[PATH_CAP] = DEFAULT_PATH;
    bool new_fsync = false;
    const char *value;

    if (find_member(config_json, "path", &value) < 0) {
        fprintf(stderr, "sink_file: the config is not a well-formed JSON object\n");
        return -1;
    }
    if (value != NULL && (read_string(value, new_path, sizeof new_path) < 0 || !*new_path)) {
        fprintf(stderr, "sink_file: path must be a non-empty string, under 4 KiB, without NUL\n");
        return -1;
    }
    (void)find_member(config_json, "fsync", &value); /* cannot fail: the object parsed above */
    if (value != NULL && read_bool(value, &new_fsync) < 0) {
        fprintf(stderr, "sink_file: fsync must be true or false\n");
        return -1;
    }
    memcpy(path, new_path, sizeof path);
    sync_to_disk = new_fsync;
    return 0;
}

int plugin_init(void)
{
    if (make_parent_dir() < 0)
        return -1;
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
        fprintf(stderr, "sink_file: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

int plugin_process(const log_entry_t *entry)
{
    int result;
    return plugin_process_batch(entry, 1, &result) < 0 ? LOGLOOM_ERROR : result;
}

/* Nothing is buffered in this process: a 0 means the entry is in the file (and with fsync on the
 * disk). A batch fails whole, to be retried, only when none of it reached the file; once part
 * did, a retry would duplicate that part, so only the entries not written are marked -1. */
int plugin_process_batch(const log_entry_t *entries, size_t count, int *results)
{
    size_t len, written;

    if (count == 0)
        return 0;
    len = fill_batch(entries, count);
    if (len == 0) {
        fprintf(stderr, "sink_file: out of memory for a batch of %zu entries\n", count);
        return LOGLOOM_ERROR;
    }
    written = write_all(batch_buf, len);
    mark_written(entries, count, results, written);
    if (written < len) {
        fprintf(stderr, "sink_file: cannot write %s: %s\n", path, strerror(errno));
        if (written > 0)
            torn = batch_buf[written - 1] != '\n';
        return written == 0 ? LOGLOOM_ERROR : 0;
    }
    torn = false;
    if (sync_to_disk && fsync(fd) != 0) {
        fprintf(stderr, "sink_file: cannot fsync %s: %s\n", path, strerror(errno));
        mark_written(entries, count, results, 0);
        return LOGLOOM_ERROR;
    }
    return 0;
}

void plugin_shutdown(void)
{
    if (fd >= 0 && close(fd) != 0)
        fprintf(stderr, "sink_file: cannot close %s: %s\n", path, strerror(errno));
    fd = -1;
    free(batch_buf);
    batch_buf = NULL;
    batch_cap = 0;
}
