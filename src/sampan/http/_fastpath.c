/* The gateway's compiled front: one thread, one epoll loop, no GIL on the hot path.
 *
 * Why: one CPython event loop proxies ~15-20k requests/s on a core; nginx does ~90k. The
 * front serves the common case - a well-formed HTTP/1.1 request to a plain proxy route -
 * entirely in C, and hands every other connection (with the bytes it already read) to the
 * Python server, which owns all error answers, plugins, upgrades and streaming request
 * bodies. So the front only ever has to recognise a strict subset of HTTP; anything outside
 * it is Python's, byte for byte. See docs/fast-path.md.
 *
 * Threads: the front's own thread runs the loop. Python talks to it through a command
 * queue (guarded by `lock`, woken by `wake_fd`) and reads back through two queues
 * (handoffs, observations; same lock, `notify_fd` wakes Python's loop). The front takes
 * the GIL only to ask Python's router about a (method, host, path) it has not seen.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <math.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define READ_CHUNK 65536
#define CLIENT_MAX_INPUT (256 * 1024)    /* a client's buffered bytes before it must go to Python */
#define MAX_SMALL_BODY 65536      /* larger request bodies stream through Python */
#define MAX_HEADERS 128
#define UP_MAX_HEAD 65536         /* as the Python client's _MAX_HEAD_BYTES */
#define UP_MAX_HEADERS 256
#define OUT_HIGH_WATER (512 * 1024) /* stop reading the upstream while the client lags */
#define IDLE_PER_ENDPOINT 64
#define CACHE_SIZE 4096           /* routing decisions kept (power of two) */
#define TICK_MS 20
#define PARTIAL_GRACE 0.5         /* seconds the rest of a split request may take */

enum { K_LISTEN = 1, K_CLIENT, K_UPSTREAM, K_WAKE };

/* ---------------------------------------------------------------- small buffers */

typedef struct {
    char *data;
    size_t len, cap, off; /* bytes [off, len) are pending */
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->len + extra <= b->cap) return 0;
    if (b->off) { /* compact first */
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + extra <= b->cap) return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_add(buf_t *b, const void *p, size_t n) {
    if (buf_reserve(b, n)) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static int buf_str(buf_t *b, const char *s) { return buf_add(b, s, strlen(s)); }

/* A field name as the Python side writes it: lowercased (its parsers lowercase names). */
static int buf_add_lower(buf_t *b, const char *p, size_t n) {
    if (buf_reserve(b, n)) return -1;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        b->data[b->len + i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    b->len += n;
    return 0;
}

static int buf_fmt(buf_t *b, const char *fmt, long long v) {
    char tmp[64];
    int n = snprintf(tmp, sizeof tmp, fmt, v);
    return buf_add(b, tmp, (size_t)n);
}

static size_t buf_pending(const buf_t *b) { return b->len - b->off; }
static void buf_free(buf_t *b) { free(b->data); memset(b, 0, sizeof *b); }
static void buf_clear(buf_t *b) { b->len = b->off = 0; }

static uint64_t fnv64(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- SHA-256 (FIPS 180-4)
 * key-auth keeps only digests of keys, as its Python side does. */

static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) +
                      SHA_K[i] + w[i];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static void sha256(const void *data, size_t n, unsigned char out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const unsigned char *p = data;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) sha256_block(h, p + i);
    unsigned char tail[128] = {0};
    size_t rest = n - i;
    memcpy(tail, p + i, rest);
    tail[rest] = 0x80;
    size_t blocks = rest + 9 <= 64 ? 1 : 2;
    uint64_t bits = (uint64_t)n * 8;
    for (int b = 0; b < 8; b++) tail[blocks * 64 - 1 - b] = (unsigned char)(bits >> (8 * b));
    for (size_t b = 0; b < blocks; b++) sha256_block(h, tail + 64 * b);
    for (int j = 0; j < 8; j++) {
        out[4 * j] = (unsigned char)(h[j] >> 24);
        out[4 * j + 1] = (unsigned char)(h[j] >> 16);
        out[4 * j + 2] = (unsigned char)(h[j] >> 8);
        out[4 * j + 3] = (unsigned char)h[j];
    }
}

/* ---------------------------------------------------------------- GCRA buckets
 * rate-limit's `local` policy: one theoretical arrival time (TAT) per key. Shared by the
 * front and the Python plugin (Buckets.take), so both paths draw from the same buckets. */

typedef struct bucket {
    char *key;
    size_t len;
    uint64_t hash;
    double tat;
    struct bucket *next;
} bucket_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    double interval, tolerance;
    bucket_t **slots;
    size_t n_slots, count, sweep_at;
} Buckets;

typedef struct {
    int allowed;
    double retry_after, reset;
    long long remaining;
} decision_t;

static void buckets_sweep(Buckets *b, double now) {
    size_t kept = 0;
    for (size_t i = 0; i < b->n_slots; i++) {
        bucket_t **pp = &b->slots[i];
        while (*pp) {
            bucket_t *e = *pp;
            if (e->tat <= now) { /* full again: the same as never seen */
                *pp = e->next;
                free(e->key);
                free(e);
            } else {
                kept++;
                pp = &e->next;
            }
        }
    }
    b->count = kept;
    b->sweep_at = kept * 2 > 1024 ? kept * 2 : 1024;
}

static int buckets_grow(Buckets *b) {
    size_t n = b->n_slots * 2;
    bucket_t **slots = calloc(n, sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < b->n_slots; i++) {
        for (bucket_t *e = b->slots[i], *next; e; e = next) {
            next = e->next;
            e->next = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
        }
    }
    free(b->slots);
    b->slots = slots;
    b->n_slots = n;
    return 0;
}

/* The decision of RateLimitPlugin._local, on the same numbers. */
static decision_t buckets_take(Buckets *b, const char *key, size_t len, double now) {
    decision_t d = {0};
    uint64_t h = fnv64(key, len);
    pthread_mutex_lock(&b->lock);
    bucket_t *e = b->slots[h & (b->n_slots - 1)];
    while (e && !(e->hash == h && e->len == len && memcmp(e->key, key, len) == 0)) e = e->next;
    double tat = e ? e->tat : now;
    if (tat < now) tat = now;
    double new_tat = tat + b->interval;
    if (new_tat - now > b->tolerance) {
        d.retry_after = new_tat - b->tolerance - now;
        d.reset = tat - now;
        pthread_mutex_unlock(&b->lock);
        return d;
    }
    if (!e) {
        e = calloc(1, sizeof *e);
        char *k = e ? malloc(len ? len : 1) : NULL;
        if (!e || !k) { /* out of memory: let it through uncounted rather than fail it */
            free(e);
            pthread_mutex_unlock(&b->lock);
            d.allowed = 1;
            return d;
        }
        memcpy(k, key, len);
        e->key = k;
        e->len = len;
        e->hash = h;
        e->next = b->slots[h & (b->n_slots - 1)];
        b->slots[h & (b->n_slots - 1)] = e;
        b->count++;
    }
    e->tat = new_tat;
    if (b->count > b->sweep_at) {
        buckets_sweep(b, now);
        if (b->count > b->n_slots) buckets_grow(b);
    }
    pthread_mutex_unlock(&b->lock);
    d.allowed = 1;
    d.reset = new_tat - now;
    d.remaining = (long long)floor((b->tolerance - (new_tat - now)) / b->interval + 1e-9);
    return d;
}

static int Buckets_init(Buckets *b, PyObject *args, PyObject *kw) {
    static char *names[] = {"interval", "tolerance", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dd", names, &b->interval, &b->tolerance)) return -1;
    if (!(b->interval > 0) || !(b->tolerance > 0)) {
        PyErr_SetString(PyExc_ValueError, "interval and tolerance must be positive");
        return -1;
    }
    if (b->slots) return 0;
    pthread_mutex_init(&b->lock, NULL);
    b->n_slots = 1024;
    b->sweep_at = 1024;
    b->slots = calloc(b->n_slots, sizeof *b->slots);
    if (!b->slots) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *Buckets_take(Buckets *b, PyObject *args) {
    const char *key;
    Py_ssize_t len;
    double now;
    if (!PyArg_ParseTuple(args, "y#d", &key, &len, &now)) return NULL;
    if (!b->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Buckets not initialised");
        return NULL;
    }
    decision_t d = buckets_take(b, key, (size_t)len, now);
    return Py_BuildValue("(OddL)", d.allowed ? Py_True : Py_False, d.retry_after, d.reset,
                         d.remaining);
}

static PyObject *Buckets_len(Buckets *b, PyObject *unused) {
    (void)unused;
    pthread_mutex_lock(&b->lock);
    size_t n = b->count;
    pthread_mutex_unlock(&b->lock);
    return PyLong_FromSize_t(n);
}

static void Buckets_dealloc(Buckets *b) {
    if (b->slots) {
        for (size_t i = 0; i < b->n_slots; i++) {
            for (bucket_t *e = b->slots[i], *next; e; e = next) {
                next = e->next;
                free(e->key);
                free(e);
            }
        }
        free(b->slots);
        pthread_mutex_destroy(&b->lock);
    }
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyMethodDef Buckets_methods[] = {
    {"take", (PyCFunction)Buckets_take, METH_VARARGS,
     "take(key, now) -> (allowed, retry_after, reset, remaining): one request's GCRA decision."},
    {"size", (PyCFunction)Buckets_len, METH_NOARGS, "Buckets held."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BucketsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sampan.http._fastpath.Buckets",
    .tp_basicsize = sizeof(Buckets),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "GCRA buckets shared by the rate-limit plugin and the compiled front.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Buckets_init,
    .tp_dealloc = (destructor)Buckets_dealloc,
    .tp_methods = Buckets_methods,
};

/* ---------------------------------------------------------------- route plugins */

#define MAX_KEY_NAMES 8
#define MAX_KEY_BYTES 1024

typedef struct {
    unsigned char digest[32];
    char *bucket; /* the rate-limit key of its consumer ("c:" + bounded name) */
    size_t bucket_len;
} key_entry_t;

typedef struct {
    /* request-id */
    int reqid;
    char reqid_header[64];
    size_t reqid_header_len;
    int reqid_trust, reqid_time_ordered, reqid_echo;
    long reqid_max;
    /* key-auth */
    int keyauth;
    char key_names[MAX_KEY_NAMES][64];
    size_t key_name_len[MAX_KEY_NAMES];
    int n_key_names;
    int key_hide;
    char *anonymous_bucket; /* NULL: no anonymous consumer */
    size_t anonymous_bucket_len;
    key_entry_t *keys;
    size_t n_keys, keys_mask; /* open addressing by digest */
    /* rate-limit */
    int ratelimit;
    PyObject *buckets_obj;
    Buckets *buckets;
    int limit_by; /* 0 consumer, 1 ip, 2 route */
    int rl_headers;
    char *rl_prefix; /* the plugin's key prefix */
    size_t rl_prefix_len;
    char *rl_policy;  /* RateLimit-Policy value */
    char *rl_state;   /* '"name";' */
} plugins_t;

/* ---------------------------------------------------------------- routes */

typedef struct endpoint {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *base;       /* path prefix of the endpoint URL ("" or "/v1") */
    size_t base_len;
    char *authority;  /* Host value when the route does not preserve the client's */
    size_t authority_len;
    int idle[IDLE_PER_ENDPOINT];
    int n_idle;
} endpoint_t;

typedef struct route {
    long id;                 /* the Python side's index */
    long quartet;            /* index into Front.quartets */
    endpoint_t *eps;
    int n_eps;
    unsigned next;
    int preserve_host;
    double connect_timeout, read_timeout, write_timeout;
    long long body_limit;
    /* pre-rendered problem answers: head lines (status line + headers) and body */
    buf_t fail_head[3], fail_body[3]; /* 0: unavailable 502, 1: invalid 502, 2: timeout 504 */
    int fail_status[3];
    plugins_t plugins;
} route_t;

typedef struct cache_entry {
    uint64_t hash;
    char *key;
    size_t key_len;
    long route;      /* index into table->routes, -1: Python's */
    char *target;    /* upstream path (without the endpoint base, without the query) */
    size_t target_len;
} cache_entry_t;

typedef struct table {
    int refs;
    route_t *routes;
    int n_routes;
    PyObject *resolver; /* owned reference; NULL: every connection goes to Python */
    cache_entry_t cache[CACHE_SIZE];
    int cached;
} table_t;

/* ---------------------------------------------------------------- connections */

struct upstream;

typedef struct client {
    int kind;
    int fd;
    int dead;                   /* freed at the end of the loop turn (events may name it) */
    struct client *next_dead;
    struct client *prev, *next; /* all clients, for the sweep */
    char ip[INET6_ADDRSTRLEN + 8];
    int port;
    buf_t in;
    buf_t out;
    int busy;            /* a request is in flight */
    int eof;             /* the client shut its side: answer what it sent, then close */
    int queued;          /* on the ready list: buffered input to look at this loop turn */
    double partial_since; /* when the front began waiting for the rest of a request */
    struct client *ready_next;
    int rdhup;           /* the peer half-closed (seen while busy; read the rest later) */
    int close_after;     /* close once out is flushed */
    int handoff_after;   /* hand to Python once out is flushed */
    int events;          /* what epoll watches now */
    double deadline;     /* idle / write deadline, 0: none */
    double write_since;  /* when out last became non-empty */
    struct upstream *up;
    /* the request in flight */
    table_t *table;
    route_t *route;
    double started;
    int head_only;
    int keep_alive;
    int response_started;
    int may_resend;
    buf_t request;       /* the head + body sent upstream, kept for one resend */
    endpoint_t *ep;
    /* what the route's plugins decided for the request in flight */
    char reqid[1025];
    size_t reqid_len;
    int reqid_generated;
    int rl_set;
    long long rl_r, rl_t;
} client_t;

enum {
    U_CONNECTING = 1,
    U_WRITING,
    U_HEAD,
    U_BODY_LENGTH,
    U_BODY_CHUNK_SIZE,
    U_BODY_CHUNK_DATA,
    U_BODY_CHUNK_CRLF,
    U_BODY_TRAILER,
    U_BODY_CLOSE,
    U_IDLE
};

typedef struct upstream {
    int kind;
    int fd;
    int dead;
    struct upstream *next_dead;
    int state;
    int reused;
    int got_bytes;
    int keep;         /* the upstream may keep the connection */
    int events;
    double deadline;
    client_t *client;
    endpoint_t *ep;
    buf_t in;
    long long remaining;
    int chunked_out;  /* re-chunk to the client */
    int paused;       /* not read while the client catches up: no read timeout */
} upstream_t;

/* ---------------------------------------------------------------- requests */

static const char *METHODS[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"};
enum { M_GET, M_POST, M_PUT, M_DELETE, M_HEAD, M_OPTIONS, M_PATCH };

typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
    int drop; /* not copied upstream */
} field_t;

typedef struct {
    const char *method;
    size_t method_len;
    const char *path;
    size_t path_len;
    const char *query; /* after '?', may be NULL */
    size_t query_len;
    size_t head_len;   /* through the blank line */
    long long length;  /* content-length, 0 when absent */
    int method_code;   /* index into METHODS (M_*) */
    int n_fields;
    const char *host;
    size_t host_len;
    const char *traceparent;
    size_t traceparent_len;
    int close;
    int idempotency_key;
    int has_connection; /* a Connection field is present (its tokens name fields to drop) */
    field_t fields[MAX_HEADERS]; /* last: not cleared per request */
} request_t;

/* ---------------------------------------------------------------- the front object */

typedef struct handoff {
    int fd;
    int refuse;
    char ip[INET6_ADDRSTRLEN + 8];
    int port;
    char *data;
    size_t len;
    struct handoff *next;
} handoff_t;

typedef struct observation {
    long route_id;
    double seconds;
    int status;
    int failure; /* -1 none, else 0..2 as fail_* */
    char detail[96];
} observation_t;

typedef struct ip_count {
    char ip[INET6_ADDRSTRLEN + 8];
    int count;
    struct ip_count *next;
} ip_count_t;

#define IP_BUCKETS 1024

typedef struct {
    unsigned char pool[4096];
    size_t used; /* starts at sizeof pool: filled on first use */
    uint64_t fallback;
} random_pool_t;

/* A route's latency histogram and error count, merged into its Python quartet now and then
 * (TargetMetrics.merge): counting here spares the Python thread a wake-up per request. */
typedef struct quartet {
    double *bounds; /* upper bounds, ascending; a last bucket counts the rest */
    int n_bounds;
    unsigned long long *buckets;
    double sum;
    unsigned long long errors;
    int dirty;
} quartet_t;

typedef struct {
    PyObject_HEAD
    int listen_fd;
    int epfd;
    int wake_fd;    /* Python -> front */
    int notify_fd;  /* front -> Python */
    pthread_t thread;
    int running;
    pthread_mutex_t lock;
    /* under lock */
    table_t *pending_table;
    int pending_drain;
    int pending_stop;
    handoff_t *handoffs, *handoffs_tail;
    observation_t *obs;
    size_t n_obs, cap_obs;
    unsigned long long obs_dropped;
    ip_count_t *ips[IP_BUCKETS];
    quartet_t *quartets; /* by the Python side's id for the route's quartet */
    PyObject **garbage;  /* references the front thread dropped (see front_discard) */
    size_t n_garbage, cap_garbage;
    size_t n_quartets;
    /* front thread only */
    random_pool_t random;
    int listen_kind, wake_kind;
    client_t *ready;           /* clients with buffered requests to look at (no recursion) */
    request_t request;         /* the request being parsed (one at a time) */
    double accept_paused_until; /* out of descriptors: accepting resumes then */
    int listen_fd_own;         /* the front's dup of the listening socket, closed at drain */
    client_t *dead_clients;
    upstream_t *dead_upstreams;
    table_t *table;
    client_t *clients;
    int n_clients;
    int draining;
    int stopping;
    /* limits */
    long max_header_bytes, max_header_count, max_url_bytes, max_per_client;
    double header_timeout, keepalive_timeout, body_timeout;
    char *latency_header;
    char *via;
    char *scheme;
    char *status_lines[1000];
    /* counters (front thread writes, Python reads without the lock: monotonic) */
    unsigned long long served, handed_off, accepted, upstream_created, upstream_reused,
        upstream_resent, resolver_calls;
} Front;

static void front_notify(Front *f) {
    uint64_t one = 1;
    ssize_t r = write(f->notify_fd, &one, sizeof one);
    (void)r;
}

/* ---------------------------------------------------------------- per-client counts */

static unsigned ip_hash(const char *s) {
    unsigned h = 2166136261u;
    while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h % IP_BUCKETS;
}

/* Count a new connection from ip; 0 if over the limit (not counted then). Under lock. */
static int ip_admit(Front *f, const char *ip) {
    ip_count_t **slot = &f->ips[ip_hash(ip)];
    for (ip_count_t *e = *slot; e; e = e->next) {
        if (strcmp(e->ip, ip) == 0) {
            if (e->count >= f->max_per_client) return 0;
            e->count++;
            return 1;
        }
    }
    if (f->max_per_client < 1) return 0;
    ip_count_t *e = calloc(1, sizeof *e);
    if (!e) return 0;
    snprintf(e->ip, sizeof e->ip, "%s", ip);
    e->count = 1;
    e->next = *slot;
    *slot = e;
    return 1;
}

static void ip_release(Front *f, const char *ip) {
    ip_count_t **slot = &f->ips[ip_hash(ip)];
    for (ip_count_t **pp = slot; *pp; pp = &(*pp)->next) {
        ip_count_t *e = *pp;
        if (strcmp(e->ip, ip) == 0) {
            if (--e->count <= 0) {
                *pp = e->next;
                free(e);
            }
            return;
        }
    }
}

/* ---------------------------------------------------------------- tables */

static void plugins_clear(plugins_t *pl) {
    for (size_t i = 0; pl->keys && i <= pl->keys_mask; i++) free(pl->keys[i].bucket);
    free(pl->keys);
    free(pl->anonymous_bucket);
    free(pl->rl_prefix);
    free(pl->rl_policy);
    free(pl->rl_state);
    /* buckets_obj is released with the GIL by table_release */
}

static void route_clear(route_t *r) {
    plugins_clear(&r->plugins);
    for (int i = 0; r->eps && i < r->n_eps; i++) {
        endpoint_t *ep = &r->eps[i];
        for (int j = 0; j < ep->n_idle; j++) close(ep->idle[j]);
        free(ep->base);
        free(ep->authority);
    }
    free(r->eps);
    for (int i = 0; i < 3; i++) {
        buf_free(&r->fail_head[i]);
        buf_free(&r->fail_body[i]);
    }
}

/* Python objects the front thread lets go of: dropped by the Python thread in take(), so
 * that no finalizer ever runs on the front's thread. */
static void front_discard(Front *f, PyObject *o) {
    if (!o) return;
    pthread_mutex_lock(&f->lock);
    if (f->n_garbage == f->cap_garbage) {
        size_t cap = f->cap_garbage ? f->cap_garbage * 2 : 16;
        PyObject **p = realloc(f->garbage, cap * sizeof *p);
        if (!p) { /* cannot queue it: leak one reference rather than take the GIL here */
            pthread_mutex_unlock(&f->lock);
            return;
        }
        f->garbage = p;
        f->cap_garbage = cap;
    }
    f->garbage[f->n_garbage++] = o;
    pthread_mutex_unlock(&f->lock);
    front_notify(f);
}

/* have_gil: called by the Python thread; otherwise by the front's, which hands the Python
 * objects to Python instead of taking the GIL. */
static void table_release(Front *f, table_t *t, int have_gil) {
    if (!t || --t->refs > 0) return;
    for (int i = 0; i < t->n_routes; i++) {
        PyObject *o = t->routes[i].plugins.buckets_obj;
        t->routes[i].plugins.buckets_obj = NULL;
        if (have_gil) Py_XDECREF(o);
        else front_discard(f, o);
    }
    for (int i = 0; i < t->n_routes; i++) route_clear(&t->routes[i]);
    free(t->routes);
    for (int i = 0; i < CACHE_SIZE; i++) {
        free(t->cache[i].key);
        free(t->cache[i].target);
    }
    if (have_gil) Py_XDECREF(t->resolver);
    else front_discard(f, t->resolver);
    t->resolver = NULL;
    free(t);
}

/* ---------------------------------------------------------------- request parsing */

static int is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* RFC 3986 pchar without '%' (an escape would need Python's normalisation). */
static int is_path_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("-._~!$&'()*+,;=:@/", c));
}

static int is_query_char(unsigned char c) {
    return is_path_char(c) || c == '?' || c == '%';
}

static int is_hex(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A Content-Length value: 1 to 18 digits, nothing else (as the Python server checks it).
 * -1 when invalid. */
static long long parse_length(const char *p, size_t n) {
    if (n == 0 || n > 18) return -1;
    long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* A chunk-size line p[0..e) (its CRLF at e): hex digits, optional whitespace and ignored
 * extensions. -1 when invalid or absurdly large. */
static long long parse_chunk_size(const char *p, const char *e) {
    if (p == e || !is_hex((unsigned char)*p)) return -1;
    long long size = 0;
    for (; p < e && is_hex((unsigned char)*p); p++) {
        if (size > (1LL << 40)) return -1;
        size = size * 16 + (*p <= '9' ? *p - '0' : (*p | 32) - 'a' + 10);
    }
    while (p < e && (*p == ' ' || *p == '\t')) p++;
    return p < e && *p != ';' ? -1 : size;
}

static int field_named(const field_t *fl, const char *name, size_t len) {
    return fl->name_len == len && strncasecmp(fl->name, name, len) == 0;
}

static int name_is(const field_t *f, const char *lower) {
    return field_named(f, lower, strlen(lower));
}

enum { P_MORE = 0, P_OK = 1, P_PYTHON = 2 };

/* Path without '//' and without '.' or '..' segments: what normalisation leaves alone. */
static int path_is_normal(const char *p, size_t n) {
    if (n == 0 || p[0] != '/') return 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_path_char((unsigned char)p[i])) return 0;
        if (p[i] == '/') {
            if (i + 1 < n && p[i + 1] == '/') return 0;
            size_t rest = n - i - 1;
            if (rest >= 1 && p[i + 1] == '.') {
                if (rest == 1 || p[i + 2] == '/') return 0;
                if (p[i + 2] == '.' && (rest == 2 || p[i + 3] == '/')) return 0;
            }
        }
    }
    return 1;
}

/* Does a Connection field among fields[0..n) list `name` as a token? Scanned in place (no
 * copy, so no limit on how many tokens a client or upstream sends). */
static int connection_lists(const field_t *fields, int n, const char *name, size_t len) {
    for (int i = 0; i < n; i++) {
        const field_t *fl = &fields[i];
        if (fl->name_len != 10 || strncasecmp(fl->name, "connection", 10) != 0) continue;
        const char *t = fl->value, *end = fl->value + fl->value_len;
        while (t < end) {
            const char *comma = memchr(t, ',', (size_t)(end - t));
            const char *te = comma ? comma : end;
            const char *a = t, *b = te;
            while (a < b && (*a == ' ' || *a == '\t')) a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
            if ((size_t)(b - a) == len && strncasecmp(a, name, len) == 0) return 1;
            t = comma ? comma + 1 : end;
        }
    }
    return 0;
}

static int is_named(const request_t *r, const char *name, size_t n) {
    return r->has_connection && connection_lists(r->fields, r->n_fields, name, n);
}

/* The tokens of every Connection field, hashed once, so that checking each field against
 * them costs fields + tokens, not fields x tokens (a head full of tokens must not stall the
 * front). */
typedef struct {
    const char *p;
    size_t n;
    uint64_t h;
} token_t;

typedef struct {
    token_t *slots; /* NULL: no Connection field */
    size_t mask;
} token_set_t;

static uint64_t lower_hash(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
        h = (h ^ c) * 1099511628211ull;
    }
    return h;
}

/* 0, or -1 when out of memory. */
static int token_set_build(token_set_t *ts, const field_t *fields, int nf) {
    ts->slots = NULL;
    size_t count = 0;
    for (int i = 0; i < nf; i++)
        if (fields[i].name_len == 10 && strncasecmp(fields[i].name, "connection", 10) == 0)
            for (size_t k = 0; k < fields[i].value_len; k++) count += fields[i].value[k] == ',';
    for (int i = 0; i < nf; i++)
        if (fields[i].name_len == 10 && strncasecmp(fields[i].name, "connection", 10) == 0) count++;
    if (!count) return 0;
    size_t size = 16;
    while (size < 2 * count) size *= 2;
    ts->slots = calloc(size, sizeof *ts->slots);
    if (!ts->slots) return -1;
    ts->mask = size - 1;
    for (int i = 0; i < nf; i++) {
        const field_t *fl = &fields[i];
        if (fl->name_len != 10 || strncasecmp(fl->name, "connection", 10) != 0) continue;
        const char *t = fl->value, *end = fl->value + fl->value_len;
        while (t < end) {
            const char *comma = memchr(t, ',', (size_t)(end - t));
            const char *a = t, *b = comma ? comma : end;
            while (a < b && (*a == ' ' || *a == '\t')) a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
            size_t n = (size_t)(b - a);
            if (n) {
                uint64_t h = lower_hash(a, n);
                size_t at = h & ts->mask;
                while (ts->slots[at].p &&
                       !(ts->slots[at].h == h && ts->slots[at].n == n &&
                         strncasecmp(ts->slots[at].p, a, n) == 0))
                    at = (at + 1) & ts->mask;
                ts->slots[at] = (token_t){a, n, h};
            }
            t = comma ? comma + 1 : end;
        }
    }
    return 0;
}

static int token_set_has(const token_set_t *ts, const char *name, size_t n) {
    if (!ts->slots || !n) return 0;
    uint64_t h = lower_hash(name, n);
    for (size_t at = h & ts->mask; ts->slots[at].p; at = (at + 1) & ts->mask)
        if (ts->slots[at].h == h && ts->slots[at].n == n && strncasecmp(ts->slots[at].p, name, n) == 0)
            return 1;
    return 0;
}

/* Parse one request at the start of p[0..n). P_PYTHON: outside the subset this front
 * serves, or something Python answers with an error; P_MORE: incomplete. */
static int parse_request(Front *f, const char *p, size_t n, request_t *r) {
    memset(r, 0, offsetof(request_t, fields));
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) return n > (size_t)f->max_header_bytes + 4 ? P_PYTHON : P_MORE;
    size_t head_len = (size_t)(end - p) + 4;
    r->head_len = head_len;
    /* request line */
    const char *line_end = memmem(p, head_len, "\r\n", 2);
    const char *sp = memchr(p, ' ', (size_t)(line_end - p));
    if (!sp) return P_PYTHON;
    r->method = p;
    r->method_len = (size_t)(sp - p);
    r->method_code = -1;
    for (int i = 0; i < (int)(sizeof METHODS / sizeof *METHODS); i++)
        if (strlen(METHODS[i]) == r->method_len && memcmp(METHODS[i], p, r->method_len) == 0)
            r->method_code = i;
    if (r->method_code < 0) return P_PYTHON;
    const char *target = sp + 1;
    const char *sp2 = memchr(target, ' ', (size_t)(line_end - target));
    if (!sp2) return P_PYTHON;
    size_t target_len = (size_t)(sp2 - target);
    if (target_len == 0 || (long)target_len > f->max_url_bytes) return P_PYTHON;
    if ((size_t)(line_end - sp2 - 1) != 8 || memcmp(sp2 + 1, "HTTP/1.1", 8) != 0) return P_PYTHON;
    const char *q = memchr(target, '?', target_len);
    r->path = target;
    r->path_len = q ? (size_t)(q - target) : target_len;
    if (!path_is_normal(r->path, r->path_len)) return P_PYTHON;
    if (q) {
        r->query = q + 1;
        r->query_len = target_len - r->path_len - 1;
        for (size_t i = 0; i < r->query_len; i++) {
            unsigned char c = (unsigned char)r->query[i];
            if (!is_query_char(c)) return P_PYTHON;
            if (c == '%' && (i + 2 >= r->query_len + 0 || !is_hex((unsigned char)r->query[i + 1]) ||
                             !is_hex((unsigned char)r->query[i + 2])))
                return P_PYTHON;
        }
    }
    /* header fields */
    long hbytes = 0;
    int hosts = 0, lengths = 0;
    const char *s = line_end + 2;
    const char *stop = p + head_len - 2; /* the final CRLF */
    while (s < stop) {
        const char *e = memmem(s, (size_t)(stop - s) + 2, "\r\n", 2);
        const char *colon = memchr(s, ':', (size_t)(e - s));
        if (!colon || colon == s) return P_PYTHON;
        for (const char *c = s; c < colon; c++)
            if (!is_tchar((unsigned char)*c)) return P_PYTHON;
        const char *v = colon + 1, *ve = e;
        for (const char *c = v; c < ve; c++) {
            unsigned char ch = (unsigned char)*c;
            if (ch != ' ' && ch != '\t' && (ch < 0x21 || ch > 0x7e)) return P_PYTHON;
        }
        while (v < ve && (*v == ' ' || *v == '\t')) v++; /* trailing OWS is kept, as Python's
                                                               parser keeps it */
        if (r->n_fields >= MAX_HEADERS || r->n_fields >= f->max_header_count) return P_PYTHON;
        field_t *fl = &r->fields[r->n_fields++];
        fl->name = s;
        fl->name_len = (size_t)(colon - s);
        fl->value = v;
        fl->value_len = (size_t)(ve - v);
        fl->drop = 0;
        hbytes += (long)(fl->name_len + fl->value_len + 4);
        if (hbytes > f->max_header_bytes) return P_PYTHON;
        switch (fl->name_len) {
        case 2:
            if (name_is(fl, "te")) fl->drop = 1;
            break;
        case 3:
            if (name_is(fl, "via")) fl->drop = 1; /* extended, at the end */
            break;
        case 4:
            if (name_is(fl, "host")) {
                hosts++;
                r->host = fl->value;
                r->host_len = fl->value_len;
                fl->drop = 1;
            }
            break;
        case 6:
            if (name_is(fl, "expect")) return P_PYTHON;
            break;
        case 7:
            if (name_is(fl, "upgrade") || name_is(fl, "trailer")) return P_PYTHON;
            break;
        case 9:
            if (name_is(fl, "forwarded") || name_is(fl, "x-real-ip")) return P_PYTHON;
            break;
        case 10:
            if (name_is(fl, "connection")) {
                fl->drop = 1;
                r->has_connection = 1;
            } else if (name_is(fl, "keep-alive")) {
                fl->drop = 1;
            }
            break;
        case 11:
            if (name_is(fl, "traceparent")) {
                if (!r->traceparent) {
                    r->traceparent = fl->value;
                    r->traceparent_len = fl->value_len;
                }
                fl->drop = 1; /* set again, at the end */
            }
            break;
        case 14:
            if (name_is(fl, "content-length")) {
                lengths++;
                r->length = parse_length(fl->value, fl->value_len);
                if (r->length < 0) return P_PYTHON;
                fl->drop = 1;
            }
            break;
        case 15:
            if (name_is(fl, "x-forwarded-for")) return P_PYTHON;
            if (name_is(fl, "idempotency-key")) r->idempotency_key = 1;
            break;
        case 16:
            if (name_is(fl, "x-forwarded-host")) return P_PYTHON;
            if (name_is(fl, "proxy-connection")) fl->drop = 1;
            break;
        case 17:
            if (name_is(fl, "transfer-encoding") || name_is(fl, "x-forwarded-proto"))
                return P_PYTHON;
            break;
        case 19:
            if (name_is(fl, "proxy-authorization") || name_is(fl, "proxy-authenticate"))
                fl->drop = 1;
            break;
        }
        s = e + 2;
    }
    if (hosts != 1 || lengths > 1) return P_PYTHON;
    if ((long)(r->method_len + target_len) + hbytes + 14 > f->max_header_bytes) return P_PYTHON;
    if (is_named(r, "upgrade", 7)) return P_PYTHON;
    if (is_named(r, "close", 5)) r->close = 1;
    if (r->length > MAX_SMALL_BODY) return P_PYTHON;
    if (n < head_len + (size_t)r->length) return P_MORE;
    return P_OK;
}

/* ---------------------------------------------------------------- front helpers */

/* `current` holds what epoll watches, with REGISTERED set once the fd was added. */
#define REGISTERED (1 << 30)
static void set_events(Front *f, int fd, void *ptr, int *current, int want) {
    if ((*current & REGISTERED) && (*current & ~REGISTERED) == want) return;
    struct epoll_event ev = {.events = (uint32_t)want, .data.ptr = ptr};
    epoll_ctl(f->epfd, (*current & REGISTERED) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    *current = want | REGISTERED;
}

static void observe(Front *f, client_t *c, int status, int failure, const char *detail) {
    double seconds = now_s() - c->started;
    pthread_mutex_lock(&f->lock);
    if (status && c->route && (size_t)c->route->quartet < f->n_quartets) {
        quartet_t *q = &f->quartets[c->route->quartet];
        int lo = 0, hi = q->n_bounds; /* bisect_left */
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (q->bounds[mid] < seconds) lo = mid + 1;
            else hi = mid;
        }
        q->buckets[lo]++;
        q->sum += seconds;
        if (status >= 500) q->errors++;
        q->dirty = 1;
    }
    if (failure < 0) { /* counted: nothing for Python to log */
        pthread_mutex_unlock(&f->lock);
        return;
    }
    if (f->n_obs == f->cap_obs) {
        size_t cap = f->cap_obs ? f->cap_obs * 2 : 1024;
        if (cap > (1u << 16)) { /* Python is not keeping up: count, do not queue */
            f->obs_dropped++;
            pthread_mutex_unlock(&f->lock);
            return;
        }
        observation_t *p = realloc(f->obs, cap * sizeof *p);
        if (!p) {
            f->obs_dropped++;
            pthread_mutex_unlock(&f->lock);
            return;
        }
        f->obs = p;
        f->cap_obs = cap;
    }
    observation_t *o = &f->obs[f->n_obs++];
    o->route_id = c->route ? c->route->id : -1;
    o->seconds = seconds;
    o->status = status;
    o->failure = failure;
    snprintf(o->detail, sizeof o->detail, "%s", detail ? detail : "");
    int first = f->n_obs == 1;
    pthread_mutex_unlock(&f->lock);
    if (first) front_notify(f);
}

static void upstream_close(Front *f, upstream_t *u) {
    if (u->fd >= 0) close(u->fd); /* closing removes it from epoll */
    u->fd = -1;
    u->dead = 1;
    u->client = NULL;
    u->next_dead = f->dead_upstreams;
    f->dead_upstreams = u;
}

static void client_free(Front *f, client_t *c, int close_fd) {
    if (c->up) {
        c->up->client = NULL;
        upstream_close(f, c->up);
        c->up = NULL;
    }
    if (c->prev) c->prev->next = c->next;
    else f->clients = c->next;
    if (c->next) c->next->prev = c->prev;
    f->n_clients--;
    if (close_fd) {
        close(c->fd);
        pthread_mutex_lock(&f->lock);
        ip_release(f, c->ip);
        pthread_mutex_unlock(&f->lock);
    }
    table_release(f, c->table, 0);
    c->table = NULL;
    c->dead = 1;
    c->next_dead = f->dead_clients;
    f->dead_clients = c;
}

static void bury(Front *f) {
    while (f->dead_clients) {
        client_t *c = f->dead_clients;
        f->dead_clients = c->next_dead;
        buf_free(&c->in);
        buf_free(&c->out);
        buf_free(&c->request);
        free(c);
    }
    while (f->dead_upstreams) {
        upstream_t *u = f->dead_upstreams;
        f->dead_upstreams = u->next_dead;
        buf_free(&u->in);
        free(u);
    }
}

static void client_close(Front *f, client_t *c) { client_free(f, c, 1); }

/* The connection becomes Python's: its fd, what it sent that we did not answer. */
static void client_handoff(Front *f, client_t *c, int refuse) {
    epoll_ctl(f->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    handoff_t *h = calloc(1, sizeof *h);
    if (!h) {
        client_close(f, c);
        return;
    }
    h->fd = c->fd;
    h->refuse = refuse;
    snprintf(h->ip, sizeof h->ip, "%s", c->ip);
    h->port = c->port;
    size_t pending = buf_pending(&c->in);
    if (pending) {
        h->data = malloc(pending);
        if (h->data) {
            memcpy(h->data, c->in.data + c->in.off, pending);
            h->len = pending;
        }
    }
    pthread_mutex_lock(&f->lock);
    if (f->handoffs_tail) f->handoffs_tail->next = h;
    else f->handoffs = h;
    f->handoffs_tail = h;
    pthread_mutex_unlock(&f->lock);
    f->handed_off++;
    front_notify(f);
    client_free(f, c, 0);
}

static void client_update_events(Front *f, client_t *c) {
    int want = 0;
    if (buf_pending(&c->out)) want |= EPOLLOUT;
    if (!c->eof && !c->busy && !c->close_after && !c->handoff_after &&
        buf_pending(&c->out) <= OUT_HIGH_WATER) /* a client that does not read is not read */
        want |= EPOLLIN;
    if (!c->eof && !c->rdhup && c->busy) want |= EPOLLRDHUP; /* a client that shuts its side */
    set_events(f, c->fd, c, &c->events, want);
}

static void client_process(Front *f, client_t *c);

/* Write what is pending; returns -1 if the client is gone (and freed). */
static int client_flush(Front *f, client_t *c) {
    while (buf_pending(&c->out)) {
        ssize_t w = send(c->fd, c->out.data + c->out.off, buf_pending(&c->out), MSG_NOSIGNAL);
        if (w > 0) {
            c->out.off += (size_t)w;
            c->write_since = now_s();
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (w < 0 && errno == EINTR) continue;
        client_close(f, c);
        return -1;
    }
    if (!buf_pending(&c->out)) {
        buf_clear(&c->out);
        if (!c->busy) {
            if (c->close_after) {
                client_close(f, c);
                return -1;
            }
            if (c->handoff_after) {
                client_handoff(f, c, 0);
                return -1;
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- answering */

static void add_latency(Front *f, client_t *c, buf_t *b) {
    if (!f->latency_header) return;
    buf_str(b, f->latency_header);
    buf_fmt(b, ": %lld\r\n", (long long)((now_s() - c->started) * 1000.0));
}

/* Keep the connection after this answer? As Python's server: not once the client has shut
 * its side, unless requests it sent before are still waiting. */
static void add_plugin_headers(client_t *c, buf_t *b);

/* The client's address as gateway/forwarded.py's client_ip() writes it (an IPv4-mapped
 * IPv6 peer as plain IPv4): X-Real-IP and the rate-limit key. */
static const char *client_ip(const client_t *c) {
    if (strncmp(c->ip, "::ffff:", 7) == 0 && strchr(c->ip + 7, '.')) return c->ip + 7;
    return c->ip;
}

static int client_keep(Front *f, client_t *c) {
    return c->keep_alive && !f->draining && (!c->eof || buf_pending(&c->in));
}

/* A pre-rendered problem answer of the route (502/504). */
static void answer_failure(Front *f, client_t *c, int which, const char *detail) {
    route_t *r = c->route;
    buf_t *b = &c->out;
    if (!c->out.len) c->write_since = now_s();
    buf_add(b, r->fail_head[which].data, r->fail_head[which].len);
    add_plugin_headers(c, b);
    add_latency(f, c, b);
    buf_fmt(b, "content-length: %lld\r\n", (long long)r->fail_body[which].len);
    int keep = client_keep(f, c);
    if (!keep) buf_str(b, "connection: close\r\n");
    buf_str(b, "\r\n");
    buf_add(b, r->fail_body[which].data, r->fail_body[which].len);
    observe(f, c, r->fail_status[which], which, detail);
    c->busy = 0;
    if (!keep) c->close_after = 1;
}

static void client_schedule(Front *f, client_t *c) {
    if (c->queued || c->dead) return;
    c->queued = 1;
    c->ready_next = f->ready;
    f->ready = c;
}

static void request_done(Front *f, client_t *c) {
    c->busy = 0;
    c->response_started = 0;
    buf_clear(&c->request);
    table_release(f, c->table, 0);
    c->table = NULL;
    c->route = NULL;
    if (!client_keep(f, c)) c->close_after = 1;
    if (client_flush(f, c) < 0) return;
    if (!c->close_after && !c->handoff_after) {
        c->deadline = now_s() + f->keepalive_timeout;
        if (buf_pending(&c->in) || c->eof) client_schedule(f, c); /* pipelined, or the end */
    }
    client_update_events(f, c);
}

/* ---------------------------------------------------------------- upstream side */

static void upstream_fail(Front *f, upstream_t *u, int which, const char *detail);
static void upstream_on_event(Front *f, upstream_t *u, uint32_t events);

static void upstream_update_events(Front *f, upstream_t *u, int want) {
    set_events(f, u->fd, u, &u->events, want);
}

static int upstream_connect(Front *f, client_t *c, endpoint_t *ep) {
    upstream_t *u = calloc(1, sizeof *u);
    if (!u) return -1;
    u->kind = K_UPSTREAM;
    u->ep = ep;
    u->client = c;
    c->up = u;
    route_t *r = c->route;
    while (ep->n_idle) { /* one the upstream closed (or wrote to) while idle is dropped */
        int fd = ep->idle[ep->n_idle - 1];
        char probe;
        ssize_t got = recv(fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        ep->n_idle--;
        close(fd);
    }
    if (ep->n_idle) {
        u->fd = ep->idle[--ep->n_idle];
        u->reused = 1;
        f->upstream_reused++;
        u->state = U_WRITING;
        u->deadline = now_s() + r->write_timeout;
        upstream_update_events(f, u, EPOLLOUT);
        return 0;
    }
    u->fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u->fd < 0) return -1;
    int one = 1;
    setsockopt(u->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    f->upstream_created++;
    int rc = connect(u->fd, (struct sockaddr *)&ep->addr, ep->addrlen);
    if (rc < 0 && errno != EINPROGRESS) return -1;
    u->state = rc == 0 ? U_WRITING : U_CONNECTING;
    u->deadline = now_s() + (rc == 0 ? r->write_timeout : r->connect_timeout);
    upstream_update_events(f, u, EPOLLOUT);
    return 0;
}

static void start_exchange(Front *f, client_t *c) {
    c->request.off = 0; /* a resend starts again from the first byte */
    if (upstream_connect(f, c, c->ep) < 0) {
        if (c->up) {
            upstream_close(f, c->up);
            c->up = NULL;
        }
        answer_failure(f, c, 0, "connect failed");
        request_done(f, c);
    }
}

/* The upstream went away before answering on a reused connection: send again once. */
static int try_resend(Front *f, upstream_t *u) {
    client_t *c = u->client;
    if (!c || !u->reused || u->got_bytes || !c->may_resend) return 0;
    c->up = NULL;
    upstream_close(f, u);
    f->upstream_resent++;
    c->may_resend = 0;
    start_exchange(f, c);
    return 1;
}

static void upstream_release(Front *f, upstream_t *u) {
    /* back to the pool when the exchange ended cleanly and both sides allow it */
    client_t *c = u->client;
    if (c) c->up = NULL;
    if (u->keep && u->state == U_IDLE && !buf_pending(&u->in) &&
        u->ep->n_idle < IDLE_PER_ENDPOINT && !f->stopping) {
        epoll_ctl(f->epfd, EPOLL_CTL_DEL, u->fd, NULL);
        u->events = 0;
        u->ep->idle[u->ep->n_idle++] = u->fd;
        u->fd = -1;
    }
    upstream_close(f, u);
}

static void upstream_fail(Front *f, upstream_t *u, int which, const char *detail) {
    client_t *c = u->client;
    if (which != 2 && try_resend(f, u)) return;
    c->up = NULL;
    upstream_close(f, u);
    if (c->response_started) { /* a truncated body must not look complete */
        observe(f, c, 0, which, detail); /* logged only: the head was counted */
        client_close(f, c);
        return;
    }
    answer_failure(f, c, which, detail);
    request_done(f, c);
}

/* Response head field names the proxy drops (HOP_BY_HOP plus framing). */
static int response_drop(const char *name, size_t n) {
    static const char *names[] = {"connection", "keep-alive", "proxy-connection", "te",
                                  "trailer", "transfer-encoding", "upgrade",
                                  "proxy-authorization", "proxy-authenticate",
                                  "content-length"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strlen(names[i]) == n && strncasecmp(names[i], name, n) == 0) return 1;
    return 0;
}

/* The whole chunked body when it is already in p[0..n) (it came with the head): decoded
 * into out, with the bytes it took in *used. 1: whole, 0: not (yet), -1: malformed. Python's
 * client keeps such a body as bytes and the server answers it with a Content-Length. */
static int dechunk_whole(const char *p, size_t n, buf_t *out, size_t *used) {
    size_t i = 0;
    for (;;) {
        const char *e = memmem(p + i, n - i, "\r\n", 2);
        if (!e) return 0;
        long long size = parse_chunk_size(p + i, e);
        if (size < 0) return -1;
        i = (size_t)(e - p) + 2;
        if (size == 0) break;
        if (n - i < (size_t)size + 2) return 0;
        if (p[i + (size_t)size] != '\r' || p[i + (size_t)size + 1] != '\n') return -1;
        if (buf_add(out, p + i, (size_t)size)) return -1;
        i += (size_t)size + 2;
    }
    for (;;) { /* trailer fields, dropped */
        const char *e = memmem(p + i, n - i, "\r\n", 2);
        if (!e) return 0;
        size_t len = (size_t)(e - (p + i));
        i += len + 2;
        if (!len) break;
    }
    *used = i;
    return 1;
}

/* Parse the upstream's head in u->in; 0: need more, 1: done, -1: invalid. */
static int upstream_head(Front *f, upstream_t *u) {
    client_t *c = u->client;
    const char *p = u->in.data + u->in.off;
    size_t n = buf_pending(&u->in);
    for (;;) {
        const char *end = memmem(p, n, "\r\n\r\n", 4);
        if (!end) return n > UP_MAX_HEAD ? -1 : 0;
        size_t head_len = (size_t)(end - p) + 4;
        if (head_len > UP_MAX_HEAD) return -1;
        if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '1' && p[7] != '0') || p[8] != ' ')
            return -1;
        if (p[9] < '1' || p[9] > '9' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
            return -1;
        int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        if (p[12] != ' ' && p[12] != '\r') return -1;
        int http10 = p[7] == '0';
        const char *line_end = memmem(p, head_len, "\r\n", 2);
        for (const char *x = p + 12; x < line_end; x++)
            if ((unsigned char)*x < 0x20 && *x != '\t') return -1;
        if (status >= 100 && status < 200) {
            if (status == 101) return -1; /* we never asked for an upgrade */
            u->in.off += head_len;        /* interim answers are not relayed */
            p += head_len;
            n -= head_len;
            continue;
        }
        /* fields */
        field_t fields[UP_MAX_HEADERS];
        int nf = 0;
        long long length = -1;
        int chunked = 0, te_other = 0, close_conn = http10;
        const char *via_first = NULL;
        const char *s = line_end + 2, *stop = p + head_len - 2;
        while (s < stop) {
            const char *e = memmem(s, (size_t)(stop - s) + 2, "\r\n", 2);
            const char *colon = memchr(s, ':', (size_t)(e - s));
            if (!colon || colon == s) return -1;
            for (const char *x = s; x < colon; x++)
                if (!is_tchar((unsigned char)*x)) return -1;
            const char *v = colon + 1, *ve = e;
            for (const char *x = v; x < ve; x++) {
                unsigned char ch = (unsigned char)*x;
                if (ch < 0x20 && ch != '\t') return -1;
                if (ch == 0x7f) return -1;
            }
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            if (nf >= UP_MAX_HEADERS) return -1;
            field_t *fl = &fields[nf++];
            fl->name = s;
            fl->name_len = (size_t)(colon - s);
            fl->value = v;
            fl->value_len = (size_t)(ve - v);
            fl->drop = response_drop(fl->name, fl->name_len);
            if (name_is(fl, "content-length")) {
                long long v2 = parse_length(fl->value, fl->value_len);
                if (v2 < 0 || (length >= 0 && length != v2)) return -1;
                length = v2;
            } else if (name_is(fl, "transfer-encoding")) {
                if (fl->value_len == 7 && strncasecmp(fl->value, "chunked", 7) == 0) chunked = 1;
                else te_other = 1;
            } else if (name_is(fl, "connection")) {
                if (connection_lists(fl, 1, "close", 5)) close_conn = 1;
            } else if (name_is(fl, "via")) {
                fl->drop = 2; /* gathered into ours */
                if (!via_first) via_first = fl->value;
            }
            s = e + 2;
        }
        if (te_other) return -1;
        plugins_t *pl = &c->route->plugins;
        if (pl->reqid && pl->reqid_echo && c->reqid_len) /* request-id sets its own */
            for (int i = 0; i < nf; i++)
                if (!fields[i].drop && field_named(&fields[i], pl->reqid_header, pl->reqid_header_len))
                    fields[i].drop = 1;
        /* fields named in Connection are dropped too */
        token_set_t named;
        if (token_set_build(&named, fields, nf) < 0) return -1;
        for (int i = 0; i < nf; i++)
            if (!fields[i].drop && token_set_has(&named, fields[i].name, fields[i].name_len))
                fields[i].drop = 1;
        free(named.slots);
        /* compose the client's head */
        int keep = client_keep(f, c);
        buf_t *b = &c->out;
        size_t mark = b->len;
        buf_t body = {0};
        size_t used = 0;
        int whole = 0;
        if (!buf_pending(b)) c->write_since = now_s();
        const char *line = f->status_lines[status];
        if (line) buf_str(b, line);
        else buf_fmt(b, "HTTP/1.1 %lld \r\n", status);
        for (int i = 0; i < nf; i++) {
            if (fields[i].drop) continue;
            buf_add_lower(b, fields[i].name, fields[i].name_len);
            buf_add(b, ": ", 2);
            buf_add(b, fields[i].value, fields[i].value_len);
            buf_add(b, "\r\n", 2);
        }
        buf_str(b, "via: ");
        for (int i = 0; i < nf; i++) {
            if (fields[i].drop != 2) continue;
            buf_add(b, fields[i].value, fields[i].value_len);
            buf_add(b, ", ", 2);
        }
        buf_str(b, f->via);
        buf_add(b, "\r\n", 2);
        add_plugin_headers(c, b);
        add_latency(f, c, b);
        int no_body = c->head_only || status == 204 || status == 304;
        u->in.off += head_len;
        u->keep = !close_conn;
        u->chunked_out = 0;
        if (no_body) {
            if (status != 204 && length >= 0) buf_fmt(b, "content-length: %lld\r\n", length);
            if (!keep) buf_str(b, "connection: close\r\n");
            buf_add(b, "\r\n", 2);
            u->state = U_IDLE;
            if (buf_pending(&u->in)) u->keep = 0; /* bytes after a body-less answer */
        } else if (chunked && (whole = dechunk_whole(u->in.data + u->in.off, buf_pending(&u->in),
                                                     &body, &used)) != 0) {
            if (whole < 0) {
                buf_free(&body);
                b->len = mark; /* nothing of this answer was written */
                return -1;
            }
            buf_fmt(b, "content-length: %lld\r\n", (long long)body.len);
            if (!keep) buf_str(b, "connection: close\r\n");
            buf_add(b, "\r\n", 2);
            buf_add(b, body.data, body.len);
            u->in.off += used;
            u->state = U_IDLE;
            if (buf_pending(&u->in)) u->keep = 0;
        } else if (chunked) {
            buf_str(b, "transfer-encoding: chunked\r\n");
            if (!keep) buf_str(b, "connection: close\r\n");
            buf_add(b, "\r\n", 2);
            u->state = U_BODY_CHUNK_SIZE;
            u->chunked_out = 1;
        } else if (length >= 0) {
            buf_fmt(b, "content-length: %lld\r\n", length);
            if (!keep) buf_str(b, "connection: close\r\n");
            buf_add(b, "\r\n", 2);
            u->remaining = length;
            u->state = length ? U_BODY_LENGTH : U_IDLE;
        } else {
            /* read to the end of the connection, relayed chunked */
            buf_str(b, "transfer-encoding: chunked\r\n");
            if (!keep) buf_str(b, "connection: close\r\n");
            buf_add(b, "\r\n", 2);
            u->keep = 0;
            u->state = U_BODY_CLOSE;
            u->chunked_out = 1;
        }
        buf_free(&body);
        c->response_started = 1;
        observe(f, c, status, -1, NULL);
        return 1;
    }
}

/* Move body bytes from u->in to the client; returns 1 when the body is complete, 0 when
 * more is needed, -1 when the upstream's framing is broken. */
static int upstream_body(Front *f, upstream_t *u) {
    client_t *c = u->client;
    buf_t *b = &c->out;
    (void)f;
    for (;;) {
        size_t n = buf_pending(&u->in);
        const char *p = u->in.data + u->in.off;
        switch (u->state) {
        case U_IDLE:
            return 1;
        case U_BODY_LENGTH: {
            size_t take = n < (size_t)u->remaining ? n : (size_t)u->remaining;
            if (!take) return 0;
            buf_add(b, p, take);
            u->in.off += take;
            u->remaining -= (long long)take;
            if (!u->remaining) {
                u->state = U_IDLE;
                if (buf_pending(&u->in)) u->keep = 0;
            }
            continue;
        }
        case U_BODY_CLOSE:
            if (!n) return 0;
            buf_fmt(b, "%llx\r\n", (long long)n);
            buf_add(b, p, n);
            buf_add(b, "\r\n", 2);
            u->in.off += n;
            return 0;
        case U_BODY_CHUNK_SIZE: {
            const char *e = memmem(p, n, "\r\n", 2);
            if (!e) return n > 1024 ? -1 : 0;
            long long size = parse_chunk_size(p, e); /* extensions are dropped */
            if (size < 0) return -1;
            u->in.off += (size_t)(e - p) + 2;
            if (size == 0) {
                u->state = U_BODY_TRAILER;
            } else {
                buf_fmt(b, "%llx\r\n", size);
                u->remaining = size;
                u->state = U_BODY_CHUNK_DATA;
            }
            continue;
        }
        case U_BODY_CHUNK_DATA: {
            size_t take = n < (size_t)u->remaining ? n : (size_t)u->remaining;
            if (!take) return 0;
            buf_add(b, p, take);
            u->in.off += take;
            u->remaining -= (long long)take;
            if (!u->remaining) {
                buf_add(b, "\r\n", 2);
                u->state = U_BODY_CHUNK_CRLF;
            }
            continue;
        }
        case U_BODY_CHUNK_CRLF:
            if (n < 2) return 0;
            if (p[0] != '\r' || p[1] != '\n') return -1;
            u->in.off += 2;
            u->state = U_BODY_CHUNK_SIZE;
            continue;
        case U_BODY_TRAILER: { /* trailer fields are dropped, as Python's relay does */
            const char *e = memmem(p, n, "\r\n", 2);
            if (!e) return n > 8192 ? -1 : 0;
            u->in.off += (size_t)(e - p) + 2;
            if (e == p) {
                buf_str(b, "0\r\n\r\n");
                u->state = U_IDLE;
                if (buf_pending(&u->in)) u->keep = 0;
            }
            continue;
        }
        default:
            return -1;
        }
    }
}

static void upstream_finish(Front *f, upstream_t *u) {
    client_t *c = u->client;
    upstream_release(f, u);
    request_done(f, c);
}

static void upstream_readable(Front *f, upstream_t *u) {
    client_t *c = u->client;
    route_t *r = c->route;
    int eof = 0, err = 0;
    for (;;) {
        if (buf_reserve(&u->in, READ_CHUNK)) {
            upstream_fail(f, u, 1, "out of memory");
            return;
        }
        ssize_t got = recv(u->fd, u->in.data + u->in.len, READ_CHUNK, 0);
        if (got > 0) {
            u->in.len += (size_t)got;
            u->got_bytes = 1;
            u->deadline = now_s() + r->read_timeout;
            if ((size_t)got < READ_CHUNK) break;
            if (buf_pending(&c->out) > OUT_HIGH_WATER || buf_pending(&u->in) >= 4 * READ_CHUNK)
                break; /* level-triggered: the rest is read on the next turn */
            continue;
        }
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        eof = 1; /* end of stream or error: first use what arrived before it */
        err = got < 0 ? errno : 0;
        break;
    }
    if (eof && !u->got_bytes) {
        if (try_resend(f, u)) return;
        upstream_fail(f, u, 0, err ? strerror(err) : "closed by the upstream");
        return;
    }
    if (u->state == U_HEAD) {
        int h = upstream_head(f, u);
        if (h < 0) {
            upstream_fail(f, u, 1, "invalid response head");
            return;
        }
        if (h == 0) {
            if (eof) upstream_fail(f, u, 1, "closed before the end of the response head");
            return;
        }
    }
    int done = upstream_body(f, u);
    if (done < 0) {
        upstream_fail(f, u, 1, "invalid response body");
        return;
    }
    if (eof && done == 0) {
        if (u->state != U_BODY_CLOSE || err) {
            upstream_fail(f, u, 1, err ? strerror(err) : "closed before the end of the body");
            return;
        }
        buf_str(&c->out, "0\r\n\r\n"); /* the body ran to the end of the connection */
        u->state = U_IDLE;
        done = 1;
    }
    if (eof) u->keep = 0;
    if (client_flush(f, c) < 0) {
        return; /* the client is gone, and its upstream with it */
    }
    if (done == 1) {
        upstream_finish(f, u);
        return;
    }
    /* back-pressure: stop reading the upstream while the client lags; its read timeout
     * waits meanwhile (the client's own write timeout covers a client that stops reading) */
    if (buf_pending(&c->out) > OUT_HIGH_WATER) {
        u->paused = 1;
        upstream_update_events(f, u, 0);
    } else {
        u->paused = 0;
        upstream_update_events(f, u, EPOLLIN);
    }
    client_update_events(f, c);
}

static void upstream_writable(Front *f, upstream_t *u) {
    client_t *c = u->client;
    route_t *r = c->route;
    if (u->state == U_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            upstream_fail(f, u, 0, strerror(err));
            return;
        }
        u->state = U_WRITING;
        u->deadline = now_s() + r->write_timeout;
        c->request.off = 0;
    }
    if (u->state == U_WRITING) {
        while (buf_pending(&c->request)) {
            ssize_t w = send(u->fd, c->request.data + c->request.off, buf_pending(&c->request),
                             MSG_NOSIGNAL);
            if (w > 0) {
                c->request.off += (size_t)w;
                continue;
            }
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            if (try_resend(f, u)) return;
            upstream_fail(f, u, 0, strerror(errno));
            return;
        }
        u->state = U_HEAD;
        u->deadline = now_s() + r->read_timeout;
        upstream_update_events(f, u, EPOLLIN);
    }
}

static void upstream_on_event(Front *f, upstream_t *u, uint32_t events) {
    if (events & EPOLLOUT) {
        upstream_writable(f, u);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) upstream_readable(f, u);
}

/* ---------------------------------------------------------------- building the request */

/* Random bytes for ids, from getrandom() 4 KiB at a time (one syscall per ~200 requests
 * instead of one or two per request). Per front: only its thread draws from it. */
static void random_bytes(random_pool_t *r, unsigned char *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (r->used >= sizeof r->pool) {
            size_t got = 0;
            while (got < sizeof r->pool) {
                ssize_t k = getrandom(r->pool + got, sizeof r->pool - got, 0);
                if (k > 0) {
                    got += (size_t)k;
                } else if (k < 0 && errno != EINTR) {
                    /* no entropy source: ids need uniqueness, not secrecy (xorshift) */
                    uint64_t x = (uint64_t)(now_s() * 1e9) ^ (uint64_t)(uintptr_t)r ^ r->fallback;
                    for (; got < sizeof r->pool; got++) {
                        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                        r->pool[got] = (unsigned char)x;
                    }
                    r->fallback = x;
                }
            }
            r->used = 0;
        }
        out[i] = r->pool[r->used++];
    }
}

static void random_hex(random_pool_t *r, char *out, size_t nbytes) {
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[64];
    if (nbytes > sizeof raw) nbytes = sizeof raw;
    random_bytes(r, raw, nbytes);
    for (size_t i = 0; i < nbytes; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
}

static int all_zero(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != '0') return 0;
    return 1;
}

static int lower_hex(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return 0;
    return 1;
}

/* next_traceparent() of sampan.mesh.tracing: the caller's trace, a new span id. */
static void add_traceparent(Front *f, buf_t *b, const char *in, size_t n) {
    char span[16];
    do random_hex(&f->random, span, 8); while (all_zero(span, 16));
    char low[64];
    /* accepted form: 2 hex version "-" 32 hex trace "-" 16 hex parent "-" 2 hex flags */
    if (in) {
        while (n && (*in == ' ' || *in == '\t')) { in++; n--; }
        while (n && (in[n - 1] == ' ' || in[n - 1] == '\t')) n--;
    }
    if (in && n == 55) {
        for (size_t i = 0; i < n; i++) low[i] = (char)((in[i] >= 'A' && in[i] <= 'Z') ? in[i] + 32 : in[i]);
        if (low[2] == '-' && low[35] == '-' && low[52] == '-' && lower_hex(low, 2) &&
            lower_hex(low + 3, 32) && lower_hex(low + 36, 16) && lower_hex(low + 53, 2) &&
            !all_zero(low + 3, 32) && !all_zero(low + 36, 16) && !(low[0] == 'f' && low[1] == 'f')) {
            buf_str(b, "traceparent: 00-");
            buf_add(b, low + 3, 32);
            buf_add(b, "-", 1);
            buf_add(b, span, 16);
            buf_add(b, "-", 1);
            buf_add(b, low + 53, 2);
            buf_add(b, "\r\n", 2);
            return;
        }
    }
    char trace[32];
    do random_hex(&f->random, trace, 16); while (all_zero(trace, 32));
    buf_str(b, "traceparent: 00-");
    buf_add(b, trace, 32);
    buf_add(b, "-", 1);
    buf_add(b, span, 16);
    buf_str(b, "-01\r\n");
}

static int is_token(const char *p, size_t n) {
    if (!n) return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)p[i])) return 0;
    return 1;
}

static void add_quoted(buf_t *b, const char *p, size_t n) {
    if (is_token(p, n)) {
        buf_add(b, p, n);
        return;
    }
    buf_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\\' || p[i] == '"') buf_add(b, "\\", 1);
        buf_add(b, p + i, 1);
    }
    buf_add(b, "\"", 1);
}

static void build_request(Front *f, client_t *c, const request_t *rq, const cache_entry_t *d) {
    route_t *rt = c->route;
    endpoint_t *ep = c->ep;
    buf_t *b = &c->request;
    buf_clear(b);
    token_set_t named = {0};
    int have_set = !rq->has_connection || token_set_build(&named, rq->fields, rq->n_fields) == 0;
    buf_add(b, rq->method, rq->method_len);
    buf_add(b, " ", 1);
    if (ep->base_len) {
        buf_add(b, ep->base, ep->base_len);
        if (d->target_len && d->target[0] != '/') buf_add(b, "/", 1);
    }
    buf_add(b, d->target, d->target_len);
    if (rq->query_len) {
        buf_add(b, "?", 1);
        buf_add(b, rq->query, rq->query_len);
    }
    buf_str(b, " HTTP/1.1\r\n");
    for (int i = 0; i < rq->n_fields; i++) {
        const field_t *fl = &rq->fields[i];
        if (fl->drop) continue;
        if (have_set ? token_set_has(&named, fl->name, fl->name_len)
                     : is_named(rq, fl->name, fl->name_len))
            continue;
        buf_add_lower(b, fl->name, fl->name_len);
        buf_add(b, ": ", 2);
        buf_add(b, fl->value, fl->value_len);
        buf_add(b, "\r\n", 2);
    }
    if (c->reqid_generated) {
        buf_add(b, rt->plugins.reqid_header, rt->plugins.reqid_header_len);
        buf_add(b, ": ", 2);
        buf_add(b, c->reqid, c->reqid_len);
        buf_add(b, "\r\n", 2);
    }
    const char *peer = c->ip;
    int v6 = strchr(peer, ':') != NULL;
    buf_str(b, "host: ");
    if (rt->preserve_host) buf_add(b, rq->host, rq->host_len);
    else buf_add(b, ep->authority, ep->authority_len);
    buf_str(b, "\r\nx-forwarded-for: ");
    buf_str(b, peer);
    buf_str(b, "\r\nx-forwarded-proto: ");
    buf_str(b, f->scheme);
    buf_str(b, "\r\nforwarded: for=");
    if (v6) {
        buf_str(b, "\"[");
        buf_str(b, peer);
        buf_str(b, "]\"");
    } else {
        buf_str(b, peer);
    }
    buf_str(b, ";proto=");
    buf_str(b, f->scheme);
    buf_str(b, ";host=");
    add_quoted(b, rq->host, rq->host_len);
    buf_str(b, "\r\nx-real-ip: ");
    buf_str(b, client_ip(c));
    buf_str(b, "\r\nvia: ");
    for (int i = 0; i < rq->n_fields; i++) {
        const field_t *fl = &rq->fields[i];
        if (fl->name_len == 3 && strncasecmp(fl->name, "via", 3) == 0) {
            buf_add(b, fl->value, fl->value_len);
            buf_add(b, ", ", 2);
        }
    }
    buf_str(b, f->via);
    buf_str(b, "\r\nx-forwarded-host: ");
    buf_add(b, rq->host, rq->host_len);
    buf_str(b, "\r\n");
    add_traceparent(f, b, rq->traceparent, rq->traceparent_len);
    if (rq->length) {
        buf_fmt(b, "content-length: %lld\r\n", rq->length);
    } else if (rq->method_code == M_POST || rq->method_code == M_PUT ||
               rq->method_code == M_PATCH) { /* as the Python client's _BODY_METHODS */
        buf_str(b, "content-length: 0\r\n");
    }
    buf_str(b, "\r\n");
    if (rq->length) buf_add(b, rq->method + rq->head_len, (size_t)rq->length);
    free(named.slots);
}

/* ---------------------------------------------------------------- routing */

/* The routing decision for (method, host, path): from the cache, else from Python. */
static cache_entry_t *decide(Front *f, table_t *t, const request_t *rq) {
    char key[8192 + 256];
    size_t kl = 0;
    if (rq->host_len + rq->path_len + 2 > sizeof key) return NULL;
    key[kl++] = (char)('0' + rq->method_code);
    memcpy(key + kl, rq->host, rq->host_len);
    kl += rq->host_len;
    key[kl++] = ' ';
    memcpy(key + kl, rq->path, rq->path_len);
    kl += rq->path_len;
    uint64_t h = fnv64(key, kl);
    cache_entry_t *e = &t->cache[h & (CACHE_SIZE - 1)];
    if (e->key && e->hash == h && e->key_len == kl && memcmp(e->key, key, kl) == 0) return e;
    if (!t->resolver) return NULL;
    /* ask Python's router (with the GIL) */
    f->resolver_calls++;
    long route = -1;
    char *target = NULL;
    size_t target_len = 0;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *res = PyObject_CallFunction(t->resolver, "s#y#y#", rq->method, (Py_ssize_t)rq->method_len,
                                          rq->host, (Py_ssize_t)rq->host_len, rq->path,
                                          (Py_ssize_t)rq->path_len);
    if (!res) {
        PyErr_WriteUnraisable(t->resolver);
    } else if (res != Py_None) {
        long idx;
        const char *tp;
        Py_ssize_t tl;
        if (PyArg_ParseTuple(res, "ly#", &idx, &tp, &tl) && idx >= 0 && idx < t->n_routes) {
            target = malloc((size_t)tl + 1);
            if (target) {
                memcpy(target, tp, (size_t)tl);
                target_len = (size_t)tl;
                route = idx;
            }
        } else if (PyErr_Occurred()) {
            PyErr_WriteUnraisable(t->resolver);
        }
    }
    Py_XDECREF(res);
    PyGILState_Release(g);
    char *kcopy = malloc(kl);
    if (!kcopy) {
        free(target);
        return NULL;
    }
    memcpy(kcopy, key, kl);
    free(e->key);
    free(e->target);
    e->hash = h;
    e->key = kcopy;
    e->key_len = kl;
    e->route = route;
    e->target = target;
    e->target_len = target_len;
    return e;
}

static int request_id_char(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("._-:+=/@", ch));
}

static void generate_request_id(Front *f, const plugins_t *pl, char out[32]) {
    unsigned char raw[16];
    random_bytes(&f->random, raw, sizeof raw);
    if (pl->reqid_time_ordered) { /* UUIDv7 layout: 48-bit Unix milliseconds first */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
        for (int i = 0; i < 6; i++) raw[i] = (unsigned char)(ms >> (8 * (5 - i)));
        raw[6] = (unsigned char)((raw[6] & 0x0F) | 0x70);
    } else {
        raw[6] = (unsigned char)((raw[6] & 0x0F) | 0x40);
    }
    raw[8] = (unsigned char)((raw[8] & 0x3F) | 0x80);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = digits[raw[i] >> 4];
        out[2 * i + 1] = digits[raw[i] & 15];
    }
}

static int digests_equal(const unsigned char *a, const unsigned char *b) {
    unsigned char diff = 0; /* constant time, as hmac.compare_digest */
    for (int i = 0; i < 32; i++) diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* The route's plugins on this request, as their Python versions decide. 0: go on (fields
 * marked for dropping, the client's scratch filled in); -1: Python's (a rejection, or
 * anything the front does not answer itself). Nothing is changed before the last check. */
static int apply_plugins(Front *f, client_t *c, route_t *rt, request_t *rq) {
    plugins_t *pl = &rt->plugins;
    c->reqid_len = 0;
    c->reqid_generated = 0;
    c->rl_set = 0;
    if (!pl->reqid && !pl->keyauth && !pl->ratelimit) return 0;
    int generate = 0;
    if (pl->reqid) {
        int count = 0;
        const field_t *incoming = NULL;
        for (int i = 0; i < rq->n_fields; i++) {
            if (field_named(&rq->fields[i], pl->reqid_header, pl->reqid_header_len)) {
                count++;
                incoming = &rq->fields[i];
            }
        }
        int valid = incoming && incoming->value_len >= 1 && (long)incoming->value_len <= pl->reqid_max;
        for (size_t i = 0; valid && i < incoming->value_len; i++)
            valid = request_id_char((unsigned char)incoming->value[i]);
        generate = !(pl->reqid_trust && count == 1 && valid);
        if (!generate) {
            memcpy(c->reqid, incoming->value, incoming->value_len);
            c->reqid_len = incoming->value_len;
        }
    }
    const char *consumer = NULL; /* the consumer's bucket key */
    size_t consumer_len = 0;
    if (pl->keyauth) {
        const field_t *key = NULL;
        for (int i = 0; i < rq->n_fields && !key; i++)
            for (int k = 0; k < pl->n_key_names; k++)
                if (field_named(&rq->fields[i], pl->key_names[k], pl->key_name_len[k])) {
                    key = &rq->fields[i];
                    break;
                }
        if (!key) {
            if (!pl->anonymous_bucket) return -1; /* 401: Python's */
            consumer = pl->anonymous_bucket;
            consumer_len = pl->anonymous_bucket_len;
        } else {
            if (!key->value_len || key->value_len > MAX_KEY_BYTES) return -1;
            unsigned char digest[32];
            sha256(key->value, key->value_len, digest);
            uint64_t h;
            memcpy(&h, digest, sizeof h);
            const key_entry_t *found = NULL;
            for (size_t at = h & pl->keys_mask; pl->keys[at].bucket; at = (at + 1) & pl->keys_mask) {
                if (digests_equal(pl->keys[at].digest, digest)) {
                    found = &pl->keys[at];
                    break;
                }
            }
            if (!found) return -1; /* 401: Python's */
            consumer = found->bucket;
            consumer_len = found->bucket_len;
        }
    }
    if (pl->ratelimit) {
        char key[MAX_KEY_BYTES + 512];
        size_t kl = 0;
        const char *ip = client_ip(c);
        if (pl->rl_prefix_len + consumer_len + 64 > sizeof key) return -1;
        memcpy(key, pl->rl_prefix, pl->rl_prefix_len);
        kl = pl->rl_prefix_len;
        if (pl->limit_by == 2) {
            memcpy(key + kl, "route", 5);
            kl += 5;
        } else if (pl->limit_by == 0 && consumer) {
            memcpy(key + kl, consumer, consumer_len);
            kl += consumer_len;
        } else {
            kl += (size_t)snprintf(key + kl, sizeof key - kl, "ip:%s", ip);
        }
        decision_t d = buckets_take(pl->buckets, key, kl, now_s());
        if (!d.allowed) return -1; /* 429: Python decides again on the same buckets */
        if (pl->rl_headers) {
            c->rl_set = 1;
            c->rl_r = d.remaining;
            c->rl_t = (long long)ceil(d.reset - 1e-9);
        }
    }
    /* accepted: now mark what the upstream must not see */
    if (generate) {
        generate_request_id(f, pl, c->reqid);
        c->reqid_len = 32;
        c->reqid_generated = 1;
        for (int i = 0; i < rq->n_fields; i++)
            if (field_named(&rq->fields[i], pl->reqid_header, pl->reqid_header_len))
                rq->fields[i].drop = 1;
    }
    if (pl->keyauth && pl->key_hide) {
        for (int i = 0; i < rq->n_fields; i++)
            for (int k = 0; k < pl->n_key_names; k++)
                if (field_named(&rq->fields[i], pl->key_names[k], pl->key_name_len[k]))
                    rq->fields[i].drop = 1;
    }
    return 0;
}

/* Response headers the route's plugins add, in the order their Python versions do
 * (response hooks run in reverse: rate-limit's, then request-id's). */
static void add_plugin_headers(client_t *c, buf_t *b) {
    plugins_t *pl = &c->route->plugins;
    if (c->rl_set) {
        buf_str(b, "ratelimit-policy: ");
        buf_str(b, pl->rl_policy);
        buf_str(b, "\r\nratelimit: ");
        buf_str(b, pl->rl_state);
        buf_fmt(b, "r=%lld", c->rl_r);
        buf_fmt(b, ";t=%lld\r\n", c->rl_t);
    }
    if (pl->reqid && pl->reqid_echo && c->reqid_len) {
        buf_add(b, pl->reqid_header, pl->reqid_header_len);
        buf_add(b, ": ", 2);
        buf_add(b, c->reqid, c->reqid_len);
        buf_add(b, "\r\n", 2);
    }
}

/* Serve what the client sent: proxy one request, or hand the connection to Python. */
static void client_process(Front *f, client_t *c) {
    if (c->busy || c->close_after || c->handoff_after || buf_pending(&c->out) > OUT_HIGH_WATER) {
        client_update_events(f, c);
        return;
    }
    size_t n = buf_pending(&c->in);
    if (!n) {
        if (c->eof) { /* nothing more will come */
            if (buf_pending(&c->out)) {
                c->close_after = 1;
                client_update_events(f, c);
            } else {
                client_close(f, c);
            }
            return;
        }
        client_update_events(f, c);
        return;
    }
    request_t *rq = &f->request; /* one request is parsed at a time, on this thread */
    const char *p = c->in.data + c->in.off;
    int r = parse_request(f, p, n, rq);
    table_t *t = f->table;
    cache_entry_t *d = NULL;
    if (r == P_OK) {
        d = t ? decide(f, t, rq) : NULL;
        if (!d || d->route < 0) r = P_PYTHON;
        else if (rq->length > t->routes[d->route].body_limit) r = P_PYTHON;
        else if (apply_plugins(f, c, &t->routes[d->route], rq) < 0) r = P_PYTHON;
    }
    if (r == P_MORE && !c->eof && n < CLIENT_MAX_INPUT) {
        /* the rest is on its way (a pipelined stream split by a read, a head in two
         * segments): wait for it a little; a client that trickles goes to Python, whose
         * header and body timers then run (see sweep) */
        if (!c->partial_since) {
            c->partial_since = now_s();
            double grace = f->header_timeout < PARTIAL_GRACE ? f->header_timeout : PARTIAL_GRACE;
            c->deadline = c->partial_since + grace;
        }
        client_update_events(f, c);
        return;
    }
    if (r != P_OK) {
        /* a request for Python (a refusal of the plugins included, or the client ended
         * mid-request): Python takes the connection from here, once what we owe the client
         * is written */
        if (buf_pending(&c->out)) {
            c->handoff_after = 1;
            client_update_events(f, c);
        } else {
            client_handoff(f, c, 0);
        }
        return;
    }
    c->busy = 1;
    c->partial_since = 0;
    c->started = now_s();
    c->table = t;
    t->refs++;
    c->route = &t->routes[d->route];
    c->head_only = rq->method_code == M_HEAD;
    c->keep_alive = !rq->close;
    int code = rq->method_code; /* the Python client's IDEMPOTENT_METHODS, or a key */
    c->may_resend = code == M_GET || code == M_PUT || code == M_DELETE || code == M_HEAD ||
                    code == M_OPTIONS || rq->idempotency_key;
    route_t *rt = c->route;
    c->ep = &rt->eps[rt->next++ % (unsigned)rt->n_eps];
    build_request(f, c, rq, d);
    c->in.off += rq->head_len + (size_t)rq->length;
    if (c->in.off == c->in.len) c->in.off = c->in.len = 0;
    c->deadline = 0;
    f->served++;
    client_update_events(f, c);
    start_exchange(f, c);
}

static void client_readable(Front *f, client_t *c) {
    for (;;) {
        if (buf_pending(&c->in) >= CLIENT_MAX_INPUT) break;
        if (buf_reserve(&c->in, READ_CHUNK)) {
            client_close(f, c);
            return;
        }
        ssize_t got = recv(c->fd, c->in.data + c->in.len, READ_CHUNK, 0);
        if (got > 0) {
            c->in.len += (size_t)got;
            if ((size_t)got < READ_CHUNK) break;
            continue;
        }
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (got == 0) { /* a half-close: what was sent is still answered, as Python does */
            c->eof = 1;
            break;
        }
        client_close(f, c); /* reset */
        return;
    }
    client_process(f, c);
}

static void client_on_event(Front *f, client_t *c, uint32_t events) {
    if (events & EPOLLOUT) {
        if (client_flush(f, c) < 0) return;
        if (c->up && c->up->paused && buf_pending(&c->out) <= OUT_HIGH_WATER) {
            c->up->paused = 0;
            c->up->deadline = now_s() + c->route->read_timeout;
            upstream_readable(f, c->up);
            return;
        }
        if (!c->busy && buf_pending(&c->out) <= OUT_HIGH_WATER && (buf_pending(&c->in) || c->eof))
            client_schedule(f, c);
        client_update_events(f, c);
        return;
    }
    if (events & EPOLLIN) {
        client_readable(f, c);
        return;
    }
    if (events & (EPOLLHUP | EPOLLERR)) { /* reset: nobody reads the answer */
        client_close(f, c);
        return;
    }
    if (events & EPOLLRDHUP) {
        if (c->busy) { /* buffer what precedes the FIN: the answer's framing depends on it */
            c->rdhup = 1;
            while (!c->eof && buf_pending(&c->in) < CLIENT_MAX_INPUT) {
                if (buf_reserve(&c->in, READ_CHUNK)) break;
                ssize_t got = recv(c->fd, c->in.data + c->in.len, READ_CHUNK, 0);
                if (got > 0) c->in.len += (size_t)got;
                else if (got == 0) c->eof = 1;
                else if (errno != EINTR) break;
            }
            client_update_events(f, c);
            return;
        }
        client_readable(f, c);
    }
}

/* ---------------------------------------------------------------- accept, sweep, commands */

static void accept_all(Front *f) {
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(f->listen_fd_own, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors or memory: stop watching the socket for a moment
                 * rather than spin on it */
                epoll_ctl(f->epfd, EPOLL_CTL_DEL, f->listen_fd_own, NULL);
                f->accept_paused_until = now_s() + 0.1;
            }
            return;
        }
        f->accepted++;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        client_t *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->kind = K_CLIENT;
        c->fd = fd;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, c->ip, sizeof c->ip);
            c->port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, c->ip, sizeof c->ip);
            c->port = ntohs(a->sin6_port);
        }
        c->next = f->clients;
        if (f->clients) f->clients->prev = c;
        f->clients = c;
        f->n_clients++;
        pthread_mutex_lock(&f->lock);
        int admitted = ip_admit(f, c->ip);
        pthread_mutex_unlock(&f->lock);
        if (!admitted || !f->table || !f->table->resolver) {
            /* over the per-client limit (Python answers 503), or nothing to serve here */
            client_handoff(f, c, !admitted);
            continue;
        }
        double first = f->header_timeout < f->keepalive_timeout ? f->header_timeout : f->keepalive_timeout;
        c->deadline = now_s() + first;
        client_update_events(f, c);
    }
}

static void sweep(Front *f) {
    double t = now_s();
    if (f->accept_paused_until && t >= f->accept_paused_until && !f->draining) {
        f->accept_paused_until = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &f->listen_kind};
        epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->listen_fd_own, &ev);
    }
    client_t *next;
    for (client_t *c = f->clients; c; c = next) {
        next = c->next;
        if (c->up && c->up->paused) c->up->deadline = t + c->route->read_timeout;
        if (c->up && c->up->deadline && t >= c->up->deadline) {
            upstream_t *u = c->up;
            if (c->response_started) { /* a body that stalls: cut */
                observe(f, c, 0, 2, "upstream body timed out");
                client_close(f, c);
                continue;
            }
            upstream_fail(f, u, 2, "timed out");
            continue;
        }
        if (buf_pending(&c->out) && t - c->write_since >= f->body_timeout) {
            client_close(f, c); /* a client that stopped reading */
            continue;
        }
        if (!c->busy && !buf_pending(&c->out) && c->deadline && t >= c->deadline) {
            if (buf_pending(&c->in)) client_handoff(f, c, 0); /* Python times the rest */
            else client_close(f, c);                          /* idle: silent close */
        }
    }
}

static void apply_commands(Front *f) {
    uint64_t v;
    ssize_t r = read(f->wake_fd, &v, sizeof v);
    (void)r;
    pthread_mutex_lock(&f->lock);
    table_t *t = f->pending_table;
    f->pending_table = NULL;
    int drain = f->pending_drain, stop = f->pending_stop;
    pthread_mutex_unlock(&f->lock);
    if (t) {
        table_release(f, f->table, 0);
        f->table = t;
    }
    if (drain && !f->draining) {
        f->draining = 1;
        epoll_ctl(f->epfd, EPOLL_CTL_DEL, f->listen_fd_own, NULL);
        close(f->listen_fd_own); /* with Python's closed too, new clients are refused */
        f->listen_fd_own = -1;
        client_t *next;
        for (client_t *c = f->clients; c; c = next) {
            next = c->next;
            if (!c->busy && !buf_pending(&c->out)) {
                if (buf_pending(&c->in)) client_process(f, c);
                else client_close(f, c);
            }
        }
    }
    if (stop) f->stopping = 1;
}

static void *front_main(void *arg) {
    Front *f = arg;
    struct epoll_event events[MAX_EVENTS];
    double last_sweep = now_s();
    while (!f->stopping) {
        int n = epoll_wait(f->epfd, events, MAX_EVENTS, f->ready ? 0 : TICK_MS);
        for (int i = 0; i < n; i++) {
            int *kind = events[i].data.ptr;
            if (*kind == K_LISTEN) accept_all(f);
            else if (*kind == K_WAKE) apply_commands(f);
        }
        for (int i = 0; i < n; i++) {
            int *kind = events[i].data.ptr;
            if (*kind == K_CLIENT) {
                client_t *c = (client_t *)kind;
                if (!c->dead) client_on_event(f, c, events[i].events);
            } else if (*kind == K_UPSTREAM) {
                upstream_t *u = (upstream_t *)kind;
                if (!u->dead && u->client) upstream_on_event(f, u, events[i].events);
            }
        }
        while (f->ready) { /* pipelined requests, one client at a time, each turn */
            client_t *c = f->ready;
            f->ready = c->ready_next;
            c->queued = 0;
            if (!c->dead) client_process(f, c);
        }
        bury(f);
        double t = now_s();
        if (t - last_sweep >= TICK_MS / 1000.0) {
            sweep(f);
            last_sweep = t;
        }
        if (f->draining && !f->clients) break;
    }
    /* stop: close what is left */
    while (f->clients) client_close(f, f->clients);
    f->ready = NULL; /* every client on it was just closed */
    bury(f);
    if (f->listen_fd_own >= 0) {
        close(f->listen_fd_own);
        f->listen_fd_own = -1;
    }
    table_release(f, f->table, 0);
    f->table = NULL;
    pthread_mutex_lock(&f->lock);
    f->running = 0;
    pthread_mutex_unlock(&f->lock);
    front_notify(f);
    return NULL;
}

/* ---------------------------------------------------------------- the Python type */

static void front_wake(Front *f) {
    uint64_t one = 1;
    ssize_t r = write(f->wake_fd, &one, sizeof one);
    (void)r;
}

static int Front_init(Front *f, PyObject *args, PyObject *kw) {
    static char *names[] = {"listen_fd", "limits", "latency_header", "via", "scheme",
                            "status_lines", NULL};
    int listen_fd;
    PyObject *limits, *latency, *status_lines;
    const char *via, *scheme;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOOyyO", names, &listen_fd, &limits, &latency,
                                     &via, &scheme, &status_lines))
        return -1;
    if (!PyArg_ParseTuple(limits, "llllddd;limits", &f->max_header_bytes, &f->max_header_count,
                          &f->max_url_bytes, &f->max_per_client, &f->header_timeout,
                          &f->keepalive_timeout, &f->body_timeout))
        return -1;
    if (latency != Py_None) {
        if (!PyBytes_Check(latency)) {
            PyErr_SetString(PyExc_TypeError, "latency_header: bytes or None");
            return -1;
        }
        f->latency_header = strdup(PyBytes_AS_STRING(latency));
    }
    f->via = strdup(via);
    f->scheme = strdup(scheme);
    if (!PyList_Check(status_lines) || PyList_GET_SIZE(status_lines) != 1000) {
        PyErr_SetString(PyExc_TypeError, "status_lines: a list of 1000 bytes or None");
        return -1;
    }
    for (int i = 0; i < 1000; i++) {
        PyObject *o = PyList_GET_ITEM(status_lines, i);
        if (o != Py_None) {
            if (!PyBytes_Check(o)) {
                PyErr_SetString(PyExc_TypeError, "status_lines: a list of 1000 bytes or None");
                return -1;
            }
            f->status_lines[i] = strdup(PyBytes_AS_STRING(o));
        }
    }
    f->listen_fd = listen_fd;
    f->listen_fd_own = -1;
    f->epfd = epoll_create1(EPOLL_CLOEXEC);
    f->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    f->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (f->epfd < 0 || f->wake_fd < 0 || f->notify_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&f->lock, NULL);
    f->listen_kind = K_LISTEN;
    f->wake_kind = K_WAKE;
    f->random.used = sizeof f->random.pool;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &f->wake_kind};
    epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->wake_fd, &ev);
    return 0;
}

static int parse_failure(route_t *r, int i, PyObject *o) {
    int status;
    const char *head, *body;
    Py_ssize_t hl, bl;
    if (!PyArg_ParseTuple(o, "iy#y#;failure", &status, &head, &hl, &body, &bl)) return -1;
    r->fail_status[i] = status;
    if (buf_add(&r->fail_head[i], head, (size_t)hl) || buf_add(&r->fail_body[i], body, (size_t)bl)) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Make room for quartet `id` with these bounds (under the lock). */
static int quartet_register(Front *f, long id, PyObject *bounds) {
    if (id < 0 || id > 1000000) {
        PyErr_SetString(PyExc_ValueError, "quartet id out of range");
        return -1;
    }
    if ((size_t)id >= f->n_quartets) {
        size_t n = (size_t)id + 1;
        quartet_t *p = realloc(f->quartets, n * sizeof *p);
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        memset(p + f->n_quartets, 0, (n - f->n_quartets) * sizeof *p);
        f->quartets = p;
        f->n_quartets = n;
    }
    quartet_t *q = &f->quartets[id];
    if (q->buckets) return 0; /* the same quartet keeps its bounds */
    Py_ssize_t nb = PyTuple_Size(bounds);
    if (nb < 0) return -1;
    q->bounds = calloc((size_t)nb + 1, sizeof *q->bounds);
    q->buckets = calloc((size_t)nb + 1, sizeof *q->buckets);
    if (!q->bounds || !q->buckets) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        q->bounds[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, i));
        if (PyErr_Occurred()) return -1;
    }
    q->n_bounds = (int)nb;
    return 0;
}

static char *dup_bytes(const char *p, Py_ssize_t n) {
    char *out = malloc((size_t)n + 1);
    if (!out) return NULL;
    memcpy(out, p, (size_t)n);
    out[n] = 0;
    return out;
}

static int copy_name(char dst[64], size_t *len, PyObject *o) {
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) < 1 || PyBytes_GET_SIZE(o) > 63) {
        PyErr_SetString(PyExc_ValueError, "a header name of 1..63 bytes");
        return -1;
    }
    memcpy(dst, PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));
    dst[PyBytes_GET_SIZE(o)] = 0;
    *len = (size_t)PyBytes_GET_SIZE(o);
    return 0;
}

/* (request-id | None, key-auth | None, rate-limit | None): see gateway/fast_front.py. */
static int parse_plugins(plugins_t *pl, PyObject *o) {
    PyObject *rid, *ka, *rl;
    if (!PyArg_ParseTuple(o, "OOO;plugins", &rid, &ka, &rl)) return -1;
    if (rid != Py_None) {
        PyObject *header;
        int trust, ordered, echo;
        if (!PyArg_ParseTuple(rid, "Opplp;request-id", &header, &trust, &ordered, &pl->reqid_max,
                              &echo))
            return -1;
        if (copy_name(pl->reqid_header, &pl->reqid_header_len, header)) return -1;
        if (pl->reqid_max < 1 || pl->reqid_max > 1024) {
            PyErr_SetString(PyExc_ValueError, "request-id max_length out of range");
            return -1;
        }
        pl->reqid = 1;
        pl->reqid_trust = trust;
        pl->reqid_time_ordered = ordered;
        pl->reqid_echo = echo;
    }
    if (ka != Py_None) {
        PyObject *names, *anonymous, *keys;
        int hide;
        if (!PyArg_ParseTuple(ka, "O!pOO!;key-auth", &PyList_Type, &names, &hide, &anonymous,
                              &PyList_Type, &keys))
            return -1;
        Py_ssize_t nn = PyList_GET_SIZE(names);
        if (nn < 1 || nn > MAX_KEY_NAMES) {
            PyErr_SetString(PyExc_ValueError, "key-auth: 1..8 key names");
            return -1;
        }
        for (Py_ssize_t i = 0; i < nn; i++)
            if (copy_name(pl->key_names[i], &pl->key_name_len[i], PyList_GET_ITEM(names, i))) return -1;
        pl->n_key_names = (int)nn;
        pl->key_hide = hide;
        if (anonymous != Py_None) {
            if (!PyBytes_Check(anonymous)) {
                PyErr_SetString(PyExc_TypeError, "key-auth: anonymous bucket key as bytes");
                return -1;
            }
            pl->anonymous_bucket = dup_bytes(PyBytes_AS_STRING(anonymous), PyBytes_GET_SIZE(anonymous));
            pl->anonymous_bucket_len = (size_t)PyBytes_GET_SIZE(anonymous);
            if (!pl->anonymous_bucket) {
                PyErr_NoMemory();
                return -1;
            }
        }
        size_t n = (size_t)PyList_GET_SIZE(keys), size = 16;
        while (size < 2 * n) size *= 2;
        pl->keys = calloc(size, sizeof *pl->keys);
        if (!pl->keys) {
            PyErr_NoMemory();
            return -1;
        }
        pl->keys_mask = size - 1;
        for (size_t i = 0; i < n; i++) {
            const char *digest, *bucket;
            Py_ssize_t dl, bl;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(keys, (Py_ssize_t)i), "y#y#;key", &digest, &dl,
                                  &bucket, &bl))
                return -1;
            if (dl != 32) {
                PyErr_SetString(PyExc_ValueError, "key-auth: 32-byte SHA-256 digests");
                return -1;
            }
            uint64_t h;
            memcpy(&h, digest, sizeof h);
            size_t at = h & pl->keys_mask;
            while (pl->keys[at].bucket) at = (at + 1) & pl->keys_mask;
            memcpy(pl->keys[at].digest, digest, 32);
            pl->keys[at].bucket = dup_bytes(bucket, bl);
            pl->keys[at].bucket_len = (size_t)bl;
            if (!pl->keys[at].bucket) {
                PyErr_NoMemory();
                return -1;
            }
        }
        pl->n_keys = n;
        pl->keyauth = 1;
    }
    if (rl != Py_None) {
        PyObject *buckets;
        const char *prefix, *policy, *state;
        Py_ssize_t pl1, pl2, pl3;
        int headers;
        if (!PyArg_ParseTuple(rl, "O!ipy#y#y#;rate-limit", &BucketsType, &buckets, &pl->limit_by,
                              &headers, &prefix, &pl1, &policy, &pl2, &state, &pl3))
            return -1;
        if (pl->limit_by < 0 || pl->limit_by > 2) {
            PyErr_SetString(PyExc_ValueError, "rate-limit: limit_by 0..2");
            return -1;
        }
        pl->rl_prefix = dup_bytes(prefix, pl1);
        pl->rl_prefix_len = (size_t)pl1;
        pl->rl_policy = dup_bytes(policy, pl2);
        pl->rl_state = dup_bytes(state, pl3);
        if (!pl->rl_prefix || !pl->rl_policy || !pl->rl_state) {
            PyErr_NoMemory();
            return -1;
        }
        Py_INCREF(buckets);
        pl->buckets_obj = buckets;
        pl->buckets = (Buckets *)buckets;
        pl->rl_headers = headers;
        pl->ratelimit = 1;
    }
    return 0;
}

static int parse_route(Front *f, route_t *r, PyObject *o) {
    PyObject *eps, *failures, *bounds, *plugins;
    int preserve;
    if (!PyArg_ParseTuple(o, "lOpdddLOlO!O;route", &r->id, &eps, &preserve, &r->connect_timeout,
                          &r->read_timeout, &r->write_timeout, &r->body_limit, &failures,
                          &r->quartet, &PyTuple_Type, &bounds, &plugins))
        return -1;
    if (plugins != Py_None && parse_plugins(&r->plugins, plugins)) return -1;
    pthread_mutex_lock(&f->lock);
    int rc = quartet_register(f, r->quartet, bounds);
    pthread_mutex_unlock(&f->lock);
    if (rc) return -1;
    r->preserve_host = preserve;
    if (!PyList_Check(eps) || PyList_GET_SIZE(eps) < 1 || !PyList_Check(failures) ||
        PyList_GET_SIZE(failures) != 3) {
        PyErr_SetString(PyExc_ValueError, "route: endpoints and three failures");
        return -1;
    }
    for (int i = 0; i < 3; i++)
        if (parse_failure(r, i, PyList_GET_ITEM(failures, i))) return -1;
    r->n_eps = (int)PyList_GET_SIZE(eps);
    r->eps = calloc((size_t)r->n_eps, sizeof *r->eps);
    if (!r->eps) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < r->n_eps; i++) {
        endpoint_t *ep = &r->eps[i];
        const char *host, *base, *authority;
        Py_ssize_t bl, al;
        int port;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(eps, i), "siy#y#;endpoint", &host, &port, &base, &bl,
                              &authority, &al))
            return -1;
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ep->addr;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ep->addr;
        if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
            a4->sin_family = AF_INET;
            a4->sin_port = htons((uint16_t)port);
            ep->addrlen = sizeof *a4;
        } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
            a6->sin6_family = AF_INET6;
            a6->sin6_port = htons((uint16_t)port);
            ep->addrlen = sizeof *a6;
        } else {
            PyErr_Format(PyExc_ValueError, "endpoint host %s is not an IP address", host);
            return -1;
        }
        ep->base = malloc((size_t)bl + 1);
        ep->authority = malloc((size_t)al + 1);
        if (!ep->base || !ep->authority) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(ep->base, base, (size_t)bl);
        ep->base_len = (size_t)bl;
        memcpy(ep->authority, authority, (size_t)al);
        ep->authority_len = (size_t)al;
    }
    return 0;
}

static PyObject *Front_set_table(Front *f, PyObject *args) {
    PyObject *resolver, *routes;
    if (!PyArg_ParseTuple(args, "OO", &resolver, &routes)) return NULL;
    if (!PyList_Check(routes)) {
        PyErr_SetString(PyExc_TypeError, "routes: a list");
        return NULL;
    }
    table_t *t = calloc(1, sizeof *t);
    if (!t) return PyErr_NoMemory();
    t->refs = 1;
    t->n_routes = (int)PyList_GET_SIZE(routes);
    t->routes = calloc((size_t)(t->n_routes ? t->n_routes : 1), sizeof *t->routes);
    if (!t->routes) {
        free(t);
        return PyErr_NoMemory();
    }
    for (int i = 0; i < t->n_routes; i++) {
        if (parse_route(f, &t->routes[i], PyList_GET_ITEM(routes, i))) {
            t->n_routes = i + 1;
            table_release(f, t, 1);
            return NULL;
        }
    }
    if (resolver != Py_None) {
        Py_INCREF(resolver);
        t->resolver = resolver;
    }
    pthread_mutex_lock(&f->lock);
    table_t *old = f->pending_table;
    f->pending_table = t;
    int running = f->running;
    pthread_mutex_unlock(&f->lock);
    table_release(f, old, 1);
    if (running) {
        front_wake(f);
    } else if (!f->thread) { /* not started yet: take it now */
        pthread_mutex_lock(&f->lock);
        t = f->pending_table;
        f->pending_table = NULL;
        pthread_mutex_unlock(&f->lock);
        table_release(f, f->table, 1);
        f->table = t;
    }
    Py_RETURN_NONE;
}

static PyObject *Front_start(Front *f, PyObject *unused) {
    (void)unused;
    if (f->thread) {
        PyErr_SetString(PyExc_RuntimeError, "the front was already started");
        return NULL;
    }
    f->listen_fd_own = fcntl(f->listen_fd, F_DUPFD_CLOEXEC, 0);
    if (f->listen_fd_own < 0) return PyErr_SetFromErrno(PyExc_OSError);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &f->listen_kind};
    if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->listen_fd_own, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close(f->listen_fd_own);
        f->listen_fd_own = -1;
        return NULL;
    }
    f->running = 1;
    int rc = pthread_create(&f->thread, NULL, front_main, f);
    if (rc) {
        f->running = 0;
        f->thread = 0;
        close(f->listen_fd_own); /* else the socket would stay in LISTEN, unserved */
        f->listen_fd_own = -1;
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Front_drain(Front *f, PyObject *unused) {
    (void)unused;
    pthread_mutex_lock(&f->lock);
    f->pending_drain = 1;
    pthread_mutex_unlock(&f->lock);
    front_wake(f);
    Py_RETURN_NONE;
}

static void front_join(Front *f) {
    if (!f->thread) return;
    pthread_mutex_lock(&f->lock);
    f->pending_stop = 1;
    pthread_mutex_unlock(&f->lock);
    front_wake(f);
    Py_BEGIN_ALLOW_THREADS /* the front may wait for the GIL to ask the router */
    pthread_join(f->thread, NULL);
    Py_END_ALLOW_THREADS
    f->thread = 0;
}

static PyObject *Front_stop(Front *f, PyObject *unused) {
    (void)unused;
    front_join(f);
    Py_RETURN_NONE;
}

static PyObject *Front_take(Front *f, PyObject *unused) {
    (void)unused;
    uint64_t v;
    ssize_t r = read(f->notify_fd, &v, sizeof v);
    (void)r;
    pthread_mutex_lock(&f->lock);
    handoff_t *h = f->handoffs;
    f->handoffs = f->handoffs_tail = NULL;
    observation_t *obs = f->obs;
    size_t n_obs = f->n_obs;
    f->obs = NULL;
    f->n_obs = f->cap_obs = 0;
    PyObject **garbage = f->garbage;
    size_t n_garbage = f->n_garbage;
    f->garbage = NULL;
    f->n_garbage = f->cap_garbage = 0;
    pthread_mutex_unlock(&f->lock);
    for (size_t i = 0; i < n_garbage; i++) Py_DECREF(garbage[i]);
    free(garbage);
    PyObject *hl = PyList_New(0), *ol = PyList_New(0);
    while (h) {
        handoff_t *next = h->next;
        PyObject *item = hl ? Py_BuildValue("(iisiy#)", h->fd, h->refuse, h->ip, h->port,
                                            h->data ? h->data : "", (Py_ssize_t)h->len)
                            : NULL;
        if (!item || PyList_Append(hl, item) < 0) { /* never leak the socket or its count */
            close(h->fd);
            if (!h->refuse) {
                pthread_mutex_lock(&f->lock);
                ip_release(f, h->ip);
                pthread_mutex_unlock(&f->lock);
            }
        }
        Py_XDECREF(item);
        free(h->data);
        free(h);
        h = next;
    }
    for (size_t i = 0; ol && i < n_obs; i++) {
        observation_t *o = &obs[i];
        PyObject *item = Py_BuildValue("(ldiis)", o->route_id, o->seconds, o->status, o->failure,
                                       o->detail);
        if (item) PyList_Append(ol, item);
        Py_XDECREF(item);
    }
    free(obs);
    if (!hl || !ol) {
        Py_XDECREF(hl);
        Py_XDECREF(ol);
        return NULL;
    }
    PyObject *res = PyTuple_Pack(2, hl, ol);
    Py_DECREF(hl);
    Py_DECREF(ol);
    return res;
}

typedef struct {
    size_t id;
    unsigned long long *buckets;
    int n;
    double sum;
    unsigned long long errors;
} counts_t;

static PyObject *Front_take_metrics(Front *f, PyObject *unused) {
    (void)unused;
    /* copy and reset under the lock, build Python objects after it (allocation may run
     * the garbage collector, which must not happen while the front waits on the lock) */
    pthread_mutex_lock(&f->lock);
    size_t dirty = 0;
    for (size_t i = 0; i < f->n_quartets; i++) dirty += f->quartets[i].dirty != 0;
    counts_t *taken = dirty ? calloc(dirty, sizeof *taken) : NULL;
    size_t k = 0;
    for (size_t i = 0; taken && i < f->n_quartets; i++) {
        quartet_t *q = &f->quartets[i];
        if (!q->dirty) continue;
        counts_t *t = &taken[k];
        t->buckets = malloc((size_t)(q->n_bounds + 1) * sizeof *t->buckets);
        if (!t->buckets) continue; /* kept for the next call */
        memcpy(t->buckets, q->buckets, (size_t)(q->n_bounds + 1) * sizeof *t->buckets);
        memset(q->buckets, 0, (size_t)(q->n_bounds + 1) * sizeof *q->buckets);
        t->id = i;
        t->n = q->n_bounds + 1;
        t->sum = q->sum;
        t->errors = q->errors;
        q->sum = 0;
        q->errors = 0;
        q->dirty = 0;
        k++;
    }
    pthread_mutex_unlock(&f->lock);
    PyObject *out = PyList_New(0);
    for (size_t j = 0; j < k; j++) {
        counts_t *t = &taken[j];
        PyObject *buckets = out ? PyList_New(t->n) : NULL;
        for (int b = 0; buckets && b < t->n; b++)
            PyList_SET_ITEM(buckets, b, PyLong_FromUnsignedLongLong(t->buckets[b]));
        PyObject *item = buckets ? Py_BuildValue("(nNdK)", (Py_ssize_t)t->id, buckets, t->sum,
                                                 t->errors)
                                 : NULL;
        if (!item || PyList_Append(out, item) < 0) Py_CLEAR(out);
        Py_XDECREF(item);
        free(t->buckets);
    }
    free(taken);
    return out;
}

static PyObject *Front_release(Front *f, PyObject *args) {
    const char *ip;
    if (!PyArg_ParseTuple(args, "s", &ip)) return NULL;
    pthread_mutex_lock(&f->lock);
    ip_release(f, ip);
    pthread_mutex_unlock(&f->lock);
    Py_RETURN_NONE;
}

static PyObject *Front_stats(Front *f, PyObject *unused) {
    (void)unused;
    pthread_mutex_lock(&f->lock);
    int running = f->running;
    unsigned long long dropped = f->obs_dropped;
    pthread_mutex_unlock(&f->lock);
    return Py_BuildValue("{s:O,s:i,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "running",
                         running ? Py_True : Py_False, "clients", f->n_clients, "accepted",
                         f->accepted, "served", f->served, "handed_off", f->handed_off,
                         "upstream_created", f->upstream_created, "upstream_reused",
                         f->upstream_reused, "upstream_resent", f->upstream_resent,
                         "resolver_calls", f->resolver_calls, "observations_dropped", dropped);
}

static PyObject *Front_get_notify_fd(Front *f, void *closure) {
    (void)closure;
    return PyLong_FromLong(f->notify_fd);
}

static PyObject *Front_get_running(Front *f, void *closure) {
    (void)closure;
    pthread_mutex_lock(&f->lock);
    int running = f->running;
    pthread_mutex_unlock(&f->lock);
    return PyBool_FromLong(running);
}

static void Front_dealloc(Front *f) {
    front_join(f);
    if (f->listen_fd_own > 0) close(f->listen_fd_own);
    if (f->epfd > 0) close(f->epfd);
    if (f->wake_fd > 0) close(f->wake_fd);
    if (f->notify_fd > 0) close(f->notify_fd);
    table_release(f, f->pending_table, 1);
    table_release(f, f->table, 1);
    for (handoff_t *h = f->handoffs; h;) {
        handoff_t *next = h->next;
        close(h->fd);
        free(h->data);
        free(h);
        h = next;
    }
    free(f->obs);
    for (size_t i = 0; i < f->n_garbage; i++) Py_DECREF(f->garbage[i]);
    free(f->garbage);
    for (size_t i = 0; i < f->n_quartets; i++) {
        free(f->quartets[i].bounds);
        free(f->quartets[i].buckets);
    }
    free(f->quartets);
    for (int i = 0; i < IP_BUCKETS; i++) {
        for (ip_count_t *e = f->ips[i]; e;) {
            ip_count_t *next = e->next;
            free(e);
            e = next;
        }
    }
    for (int i = 0; i < 1000; i++) free(f->status_lines[i]);
    free(f->latency_header);
    free(f->via);
    free(f->scheme);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyMethodDef Front_methods[] = {
    {"set_table", (PyCFunction)Front_set_table, METH_VARARGS,
     "Serve these routes from the next request on (resolver None: hand everything to Python)."},
    {"start", (PyCFunction)Front_start, METH_NOARGS, "Start the front's thread."},
    {"drain", (PyCFunction)Front_drain, METH_NOARGS,
     "Stop accepting; close idle connections; finish the requests in flight."},
    {"stop", (PyCFunction)Front_stop, METH_NOARGS, "Close everything and join the thread."},
    {"take", (PyCFunction)Front_take, METH_NOARGS,
     "(handoffs, observations) queued since the last call."},
    {"take_metrics", (PyCFunction)Front_take_metrics, METH_NOARGS,
     "[(quartet id, bucket counts, latency sum, errors)] since the last call."},
    {"release", (PyCFunction)Front_release, METH_VARARGS,
     "A handed-off connection from this address closed."},
    {"stats", (PyCFunction)Front_stats, METH_NOARGS, "Counters."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Front_getset[] = {
    {"notify_fd", (getter)Front_get_notify_fd, NULL, "Readable when take() has something.", NULL},
    {"running", (getter)Front_get_running, NULL, "The thread has not ended.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FrontType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sampan.http._fastpath.Front",
    .tp_basicsize = sizeof(Front),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled front of the gateway (see docs/fast-path.md).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Front_init,
    .tp_dealloc = (destructor)Front_dealloc,
    .tp_methods = Front_methods,
    .tp_getset = Front_getset,
};

static PyObject *module_sha256(PyObject *self, PyObject *args) {
    (void)self;
    const char *data;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y#", &data, &n)) return NULL;
    unsigned char out[32];
    sha256(data, (size_t)n, out);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyMethodDef module_methods[] = {
    {"sha256", module_sha256, METH_VARARGS,
     "The SHA-256 digest key-auth compares (checked against hashlib by the tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The gateway's compiled front.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&FrontType) < 0 || PyType_Ready(&BucketsType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&FrontType);
    if (PyModule_AddObject(m, "Front", (PyObject *)&FrontType) < 0) {
        Py_DECREF(&FrontType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&BucketsType);
    if (PyModule_AddObject(m, "Buckets", (PyObject *)&BucketsType) < 0) {
        Py_DECREF(&BucketsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
