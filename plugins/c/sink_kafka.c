/*
 * sink_kafka — log_exporter_kafka (design §6.1): each entry's JSON as one Kafka message, built
 * as liblog_exporter_kafka.so and linked with librdkafka.
 *
 * Config (log_exporter_kafka.yaml, handed to plugin_configure as JSON):
 *   bootstrap.servers    the brokers, "host:port,host:port" (default localhost:9092)
 *   topic                where entries go (default logloom)
 *   key                  the entry field whose value keys each message, e.g. module, so the
 *                        entries of one module stay in order in one partition; null for none
 *   acks                 all (default), 1 or 0
 *   enable.idempotence   true (default): the broker drops the duplicates of librdkafka's own
 *                        retries, so a message is written once per produce call
 *   delivery_timeout_ms  how long a batch waits for its acknowledgements (default 10000)
 *   properties           any other librdkafka properties, passed through as they are
 *
 * One plugin_process_batch call produces the whole batch, then waits until the broker has
 * acknowledged (or refused) every message, or delivery_timeout_ms has passed. results[i] is 0
 * only for a message the broker acknowledged. The others are LOGLOOM_UNAVAILABLE while the
 * fault is Kafka's (the stage holds them until it takes them) and LOGLOOM_ERROR when it is the
 * entry's (too large, refused as invalid: retried, then dead-lettered). Delivery is at least
 * once: a message whose acknowledgement was lost is sent again.
 */
#define _POSIX_C_SOURCE 200809L

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "logloom_plugin.h"

#define PLUGIN_NAME "log_exporter_kafka"
#define DEFAULT_SERVERS "localhost:9092"
#define DEFAULT_TOPIC "logloom"
#define DEFAULT_KEY "module"
#define DEFAULT_DELIVERY_TIMEOUT_MS 10000L
#define TOPIC_CAP 250 /* Kafka allows 249 characters */
#define KEY_FIELD_CAP 256
/* How long past delivery_timeout_ms a batch waits for the reports of librdkafka's own timeouts,
 * then for those of what it purges. */
#define REPORT_GRACE_MS 1000L
#define PURGE_GRACE_MS 2000L
#define UNREPORTED 1 /* a results[] value no report has replaced yet: no sink code is 1 */

/* A message's opaque: the batch generation above INDEX_BITS, its index in the batch below, so
 * a late report of an earlier batch cannot touch the current one's results. */
#define INDEX_BITS 24
#define INDEX_MASK (((uintptr_t)1 << INDEX_BITS) - 1)
#define GENERATION_MASK (UINTPTR_MAX >> INDEX_BITS)

/* --- Reading the config: for_each_member(), find_member(), read_string() and friends. */
#include "config_json.h"

/* What plugin_configure read, used by plugin_init (again after a fatal producer error). */
static struct settings {
    rd_kafka_conf_t *conf; /* bootstrap.servers, acks, idempotence, properties, callbacks */
    char topic[TOPIC_CAP];
    char key_field[KEY_FIELD_CAP]; /* "" for no key */
    long delivery_timeout_ms;
} settings;

static rd_kafka_t *producer;
static rd_kafka_topic_t *topic;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* one batch at a time */

/* The batch in flight; delivery reports are served on the calling thread, inside our polls. */
static struct batch {
    uintptr_t generation;
    int *results;
    size_t count, pending, failed;
    rd_kafka_resp_err_t first_error;
} batch;

static char *key_buf; /* a decoded key; librdkafka copies keys, so one buffer serves a batch */
static size_t key_cap;

static void say(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fputs(PLUGIN_NAME ": ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What a failed delivery means for its entry: LOGLOOM_ERROR for the entry's own faults, which
 * no retry cures (the stage retries it a few times, then dead-letters it); LOGLOOM_UNAVAILABLE
 * for everything else, the broker's or the link's (down, leaderless, timed out, refusing our
 * producer id, the topic missing), for which the stage holds the entry until Kafka takes it. */
static int failure_code(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR__BAD_MSG:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
        return LOGLOOM_ERROR;
    default:
        return LOGLOOM_UNAVAILABLE;
    }
}

/* --- librdkafka callbacks. */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque)
{
    uintptr_t tag = (uintptr_t)message->_private;
    size_t index = (size_t)(tag & INDEX_MASK);

    (void)rk, (void)opaque;
    if (tag >> INDEX_BITS != batch.generation || index >= batch.count
        || batch.results[index] != UNREPORTED)
        return;
    batch.pending--;
    if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        batch.results[index] = LOGLOOM_OK;
        return;
    }
    batch.results[index] = failure_code(message->err);
    if (batch.failed++ == 0)
        batch.first_error = message->err;
}

/* One line per kind of error a minute, not one per reconnection attempt: a broker that is down
 * reports the same errors every few hundred milliseconds, and the failed batches say so anyway.
 * Served inside our polls, so on the batch's thread. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    static struct { int err; long at_ms; } said[8];
    size_t slot = 0;
    long now = now_ms();

    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_fatal_error(rk, why, sizeof why);
        say("fatal producer error, a new producer takes over: %s", why);
        return;
    }
    for (size_t i = 0; i < sizeof said / sizeof said[0]; i++) {
        if (said[i].err == err) {
            slot = i;
            break;
        }
        if (said[i].at_ms < said[slot].at_ms)
            slot = i; /* the oldest, if err was not said yet */
    }
    if (said[slot].err == err && said[slot].at_ms != 0 && now - said[slot].at_ms < 60000)
        return;
    said[slot].err = err, said[slot].at_ms = now;
    say("%s", reason);
}

/* librdkafka logs each failed connection attempt; on_error already says what matters, once. */
static void on_log(const rd_kafka_t *rk, int level, const char *facility, const char *line)
{
    (void)rk;
    if (level <= 2 /* LOG_CRIT */)
        say("librdkafka %s: %s", facility, line);
}

/* --- Reading the config. */

static int set_property(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char why[512];
    if (rd_kafka_conf_set(conf, name, value, why, sizeof why) == RD_KAFKA_CONF_OK)
        return 0;
    say("%s: %s", name, why);
    return 1;
}

/* A property's value as librdkafka wants it: a string decoded, a number or a boolean as
 * written. NULL (after saying why) for null, an object or an array. The caller frees it. */
static char *property_text(const char *name, const char *value)
{
    const char *end = skip_value(value);
    size_t len = (size_t)(end - value);
    char *text;

    if (*value == '{' || *value == '[' || (len == 4 && memcmp(value, "null", 4) == 0)) {
        say("%s: a property is a string, a number or true/false", name);
        return NULL;
    }
    if ((text = malloc(JSON_STRING_ROOM(len))) == NULL) {
        say("out of memory reading %s", name);
        return NULL;
    }
    if (*value == '"') {
        if (read_string(value, text, JSON_STRING_ROOM(len)) == 0)
            return text;
        say("%s: not a valid string", name);
        free(text);
        return NULL;
    }
    memcpy(text, value, len);
    text[len] = '\0';
    return text;
}

static bool is_named(const char *name, size_t name_len, const char *expected)
{
    return strlen(expected) == name_len && memcmp(name, expected, name_len) == 0;
}

/* A member of `properties`: handed to librdkafka, which rejects what it does not know. */
static int visit_property(const char *name, size_t name_len, const char *value, void *ctx)
{
    static const char *const own[] = {"bootstrap.servers", "acks", "enable.idempotence"};
    struct settings *next = ctx;
    char key[256];
    char *text;
    int failed;

    if (name_len >= sizeof key || memchr(name, '\\', name_len) != NULL) {
        say("properties: %.*s is not a librdkafka property", (int)name_len, name);
        return 1;
    }
    memcpy(key, name, name_len);
    key[name_len] = '\0';
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        if (strcmp(key, own[i]) == 0) {
            say("properties: set %s at the top level of the config, not under properties", key);
            return 1;
        }
    }
    if ((text = property_text(key, value)) == NULL)
        return 1;
    failed = set_property(next->conf, key, text);
    free(text);
    return failed;
}

static int read_topic(const char *value, struct settings *next)
{
    if (value == NULL)
        return 0;
    if (read_string(value, next->topic, sizeof next->topic) < 0 || !*next->topic) {
        say("topic must be a non-empty string of at most 249 characters");
        return 1;
    }
    return 0;
}

static int read_key(const char *value, struct settings *next)
{
    if (value == NULL)
        return 0;
    if (strncmp(value, "null", 4) == 0) {
        next->key_field[0] = '\0';
        return 0;
    }
    if (read_string(value, next->key_field, sizeof next->key_field) < 0) {
        say("key must be the name of an entry field, such as module, or null for no key");
        return 1;
    }
    return 0;
}

/* acks: all, -1, 0 or 1, as a string or a number. */
static int read_acks(const char *value, struct settings *next)
{
    char acks[8];
    const char *end;

    if (value == NULL)
        return 0;
    if (*value == '"') {
        if (read_string(value, acks, sizeof acks) < 0)
            acks[0] = '\0';
    } else if ((end = skip_literal(value)) != NULL && (size_t)(end - value) < sizeof acks) {
        memcpy(acks, value, (size_t)(end - value));
        acks[end - value] = '\0';
    } else {
        acks[0] = '\0';
    }
    if (strcmp(acks, "all") != 0 && strcmp(acks, "-1") != 0 && strcmp(acks, "0") != 0
        && strcmp(acks, "1") != 0) {
        say("acks must be all, 1 or 0");
        return 1;
    }
    return set_property(next->conf, "acks", acks);
}

static int read_string_property(const char *json, const char *name, const char *fallback,
                                rd_kafka_conf_t *conf)
{
    const char *value;
    char *text;
    int failed;

    (void)find_member(json, name, &value);
    if (value == NULL)
        return set_property(conf, name, fallback);
    if (*value != '"') {
        say("%s must be a string", name);
        return 1;
    }
    if ((text = property_text(name, value)) == NULL)
        return 1;
    failed = set_property(conf, name, text);
    free(text);
    return failed;
}

/* Unknown keys fail, named, like every key of a Logloom config. */
static int visit_top_level(const char *name, size_t name_len, const char *value, void *ctx)
{
    static const char *const known[] = {
        "bootstrap.servers", "topic", "key", "acks", "enable.idempotence",
        "delivery_timeout_ms", "properties",
        "name", "type", "version", /* what a <name>.yaml may say about the plugin itself */
    };
    (void)value, (void)ctx;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (is_named(name, name_len, known[i]))
            return 0;
    }
    say("unknown config key '%.*s' (known: bootstrap.servers, topic, key, acks, "
        "enable.idempotence, delivery_timeout_ms, properties)", (int)name_len, name);
    return 1;
}

static int read_settings(const char *json, struct settings *next)
{
    const char *value;
    bool idempotent = true;
    char timeout[24];
    int walked = for_each_member(json, visit_top_level, NULL);

    if (walked < 0)
        say("the config is not a well-formed JSON object");
    if (walked != 0)
        return 1;
    (void)find_member(json, "topic", &value);
    if (read_topic(value, next))
        return 1;
    (void)find_member(json, "key", &value);
    if (read_key(value, next))
        return 1;
    if (read_string_property(json, "bootstrap.servers", DEFAULT_SERVERS, next->conf))
        return 1;
    (void)find_member(json, "acks", &value);
    if (read_acks(value == NULL ? "\"all\"" : value, next))
        return 1;
    (void)find_member(json, "enable.idempotence", &value);
    if (value != NULL && read_bool(value, &idempotent) < 0) {
        say("enable.idempotence must be true or false");
        return 1;
    }
    if (set_property(next->conf, "enable.idempotence", idempotent ? "true" : "false"))
        return 1;
    (void)find_member(json, "delivery_timeout_ms", &value);
    if (value != NULL
        && (read_long(value, &next->delivery_timeout_ms) < 0 || next->delivery_timeout_ms < 1
            || next->delivery_timeout_ms > 3600000L)) {
        say("delivery_timeout_ms must be a whole number of milliseconds, 1 to 3600000");
        return 1;
    }
    /* librdkafka gives up on a message at the same moment; properties may say otherwise. */
    snprintf(timeout, sizeof timeout, "%ld", next->delivery_timeout_ms);
    if (set_property(next->conf, "message.timeout.ms", timeout))
        return 1;
    (void)find_member(json, "properties", &value);
    if (value != NULL && strncmp(value, "null", 4) != 0) {
        if (*value != '{') {
            say("properties must be a mapping of librdkafka properties");
            return 1;
        }
        if (for_each_member(value, visit_property, next) != 0)
            return 1;
    }
    return 0;
}

/* --- The producer. */

static void destroy_producer(void)
{
    if (topic != NULL)
        rd_kafka_topic_destroy(topic);
    if (producer != NULL)
        rd_kafka_destroy(producer);
    topic = NULL;
    producer = NULL;
}

/* A producer from the settings (their conf stays ours, for creating it again). It connects in
 * the background: a broker that is down now does not fail this. */
static int create_producer(void)
{
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_dup(settings.conf);

    producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
    if (producer == NULL) {
        rd_kafka_conf_destroy(conf);
        say("cannot create the producer: %s", why);
        return -1;
    }
    topic = rd_kafka_topic_new(producer, settings.topic, NULL);
    if (topic == NULL) {
        say("topic %s: %s", settings.topic, rd_kafka_err2str(rd_kafka_last_error()));
        destroy_producer();
        return -1;
    }
    return 0;
}

/* A producer that delivered nothing of its last batch is replaced before the next one: a broker
 * that restarted without its state (memory storage, a rebuilt cluster) no longer knows the
 * producer's idempotence id and refuses its messages for good, where a new producer gets a new
 * id. So does a producer that raised a fatal error, which ends it. */
static bool replace_producer;

static int ready_producer(void)
{
    char why[512];

    if (producer != NULL && (replace_producer || rd_kafka_fatal_error(producer, why, sizeof why)))
        destroy_producer();
    replace_producer = false;
    return producer != NULL ? 0 : create_producer();
}

/* --- One batch. */

/* The key of an entry's message: the value of the key field, a string decoded, anything else
 * as its JSON; NULL (no key) when the field is missing, empty or null. */
static const char *entry_key(const log_entry_t *entry, size_t *len)
{
    static const struct { const char *name; size_t offset; } fields[] = {
        {"timestamp", offsetof(log_entry_t, timestamp)},
        {"level", offsetof(log_entry_t, level)},
        {"module", offsetof(log_entry_t, module)},
        {"message", offsetof(log_entry_t, message)},
        {"lang_key", offsetof(log_entry_t, lang_key)},
    };
    const char *value, *end;
    size_t raw;

    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (strcmp(settings.key_field, fields[i].name) == 0) {
            value = *(const char *const *)((const char *)entry + fields[i].offset);
            *len = value == NULL ? 0 : strlen(value);
            return *len == 0 ? NULL : value;
        }
    }
    if (find_member(entry->json, settings.key_field, &value) < 0 || value == NULL
        || strncmp(value, "null", 4) == 0 || (end = skip_value(value)) == NULL)
        return NULL;
    raw = (size_t)(end - value);
    if (*value == '"') {
        if (JSON_STRING_ROOM(raw) > key_cap) {
            char *grown = realloc(key_buf, JSON_STRING_ROOM(raw));
            if (grown == NULL)
                return NULL;
            key_buf = grown;
            key_cap = JSON_STRING_ROOM(raw);
        }
        if (read_string(value, key_buf, key_cap) == 0) {
            *len = strlen(key_buf);
            return *len == 0 ? NULL : key_buf;
        }
        value++, raw -= 2; /* a string no C string holds (a NUL): its text as written */
    }
    *len = raw;
    return value;
}

/* Queues one message; waits for room while librdkafka's queue is full, until deadline. */
static rd_kafka_resp_err_t produce(const log_entry_t *entry, size_t index, long deadline)
{
    size_t key_len = 0;
    const char *key = settings.key_field[0] ? entry_key(entry, &key_len) : NULL;
    void *tag = (void *)(batch.generation << INDEX_BITS | index);

    for (;;) {
        /* F_COPY: the entry is ours only for this call. librdkafka only reads the payload. */
        if (rd_kafka_produce(topic, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY,
                             (void *)(uintptr_t)entry->json, strlen(entry->json), key, key_len,
                             tag) == 0)
            return RD_KAFKA_RESP_ERR_NO_ERROR;
        if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL || now_ms() >= deadline)
            return rd_kafka_last_error();
        rd_kafka_poll(producer, 10);
    }
}

/* Serves delivery reports until every message of the batch has one or `until` has passed. */
static void wait_for_reports(long until)
{
    long left;
    while (batch.pending > 0 && (left = until - now_ms()) > 0)
        rd_kafka_flush(producer, left < 100 ? (int)left : 100);
}

/* --- The plugin ABI. */

const plugin_info_t *plugin_info(void)
{
    static const plugin_info_t info = {
        .name = PLUGIN_NAME,
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
    struct settings next = {
        .conf = rd_kafka_conf_new(),
        .topic = DEFAULT_TOPIC,
        .key_field = DEFAULT_KEY,
        .delivery_timeout_ms = DEFAULT_DELIVERY_TIMEOUT_MS,
    };

    rd_kafka_conf_set_dr_msg_cb(next.conf, on_delivery);
    rd_kafka_conf_set_error_cb(next.conf, on_error);
    rd_kafka_conf_set_log_cb(next.conf, on_log);
    if (set_property(next.conf, "client.id", "logloom") || read_settings(config_json, &next)) {
        rd_kafka_conf_destroy(next.conf);
        return -1;
    }
    if (settings.conf != NULL)
        rd_kafka_conf_destroy(settings.conf);
    settings = next;
    return 0;
}

int plugin_init(void)
{
    if (settings.conf == NULL && plugin_configure("{}") != 0)
        return -1;
    return create_producer();
}

int plugin_process(const log_entry_t *entry)
{
    int result;
    return plugin_process_batch(entry, 1, &result) < 0 ? LOGLOOM_ERROR : result;
}

static void report_failures(void)
{
    if (batch.failed > 0)
        say("%zu of %zu entries not delivered to topic %s: %s", batch.failed, batch.count,
            settings.topic, rd_kafka_err2str(batch.first_error));
}

int plugin_process_batch(const log_entry_t *entries, size_t count, int *results)
{
    long deadline;

    if (count == 0)
        return 0;
    if (count > INDEX_MASK)
        return LOGLOOM_ERROR;
    pthread_mutex_lock(&lock);
    if (ready_producer() < 0) {
        pthread_mutex_unlock(&lock);
        return LOGLOOM_ERROR;
    }
    batch = (struct batch){
        .generation = (batch.generation + 1) & GENERATION_MASK,
        .results = results,
        .count = count,
    };
    /* librdkafka times messages out at delivery_timeout_ms; its reports get a moment more. */
    deadline = now_ms() + settings.delivery_timeout_ms + REPORT_GRACE_MS;
    for (size_t i = 0; i < count; i++) {
        rd_kafka_resp_err_t err = produce(&entries[i], i, deadline);
        results[i] = err ? failure_code(err) : UNREPORTED;
        if (!err)
            batch.pending++;
        else if (batch.failed++ == 0)
            batch.first_error = err;
    }
    wait_for_reports(deadline);
    if (batch.pending > 0) {
        /* Not acknowledged in time: take them back, so that they are not sent after we have
         * reported them failed (they may still have been written: at least once). */
        rd_kafka_purge(producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        wait_for_reports(now_ms() + PURGE_GRACE_MS);
    }
    for (size_t i = 0; i < count; i++) {
        if (results[i] == UNREPORTED) {
            results[i] = LOGLOOM_UNAVAILABLE;
            if (batch.failed++ == 0)
                batch.first_error = RD_KAFKA_RESP_ERR__TIMED_OUT;
        }
    }
    report_failures();
    replace_producer = batch.failed == count;
    batch.results = NULL, batch.count = 0;
    pthread_mutex_unlock(&lock);
    return 0;
}

void plugin_shutdown(void)
{
    pthread_mutex_lock(&lock);
    if (producer != NULL)
        rd_kafka_flush(producer, 1000); /* nothing is outstanding between batches; be sure */
    destroy_producer();
    if (settings.conf != NULL)
        rd_kafka_conf_destroy(settings.conf);
    settings.conf = NULL;
    free(key_buf);
    key_buf = NULL;
    key_cap = 0;
    pthread_mutex_unlock(&lock);
}
