/*
 * loadgen: a closed-loop TCP echo load generator for the uringreactor
 * benchmarks.
 *
 *   loadgen HOST PORT CONNECTIONS SIZE DEPTH WARMUP_S SECONDS SERVER_PID [MODE]
 *
 * HOST is an address or a name, or unix:PATH for a UNIX stream socket
 * (PORT is then ignored).  MODE is one of:
 *
 *   stream  (the default) CONNECTIONS long-lived connections, as below;
 *   churn   a new connection per request: connect, send SIZE bytes, read
 *           them back, close, and again, CONNECTIONS cycles at a time; a
 *           request is one whole cycle, its latency from connect to the
 *           last echoed byte;
 *   tls     as stream, over TLS (built with -DLOADGEN_TLS, linked with
 *           -lssl -lcrypto); the handshakes happen before the warm-up and
 *           the server's certificate is not checked.
 *
 * Opens CONNECTIONS connections; each keeps DEPTH messages of SIZE bytes in
 * flight and sends the next one as soon as one has been echoed in full.
 * Every echoed byte is checked against the byte that was sent, so a server
 * that drops, duplicates or reorders data is caught.  Connection c's stream
 * is the byte table T (pseudo-random, of prime length P = 65521) read
 * cyclically from offset c * 977: it is sent straight out of a table that
 * repeats T for 256 KiB past its end and checked with memcmp against it, cheap enough for bulk transfers,
 * and a shift of the stream by any message size below P does not match.
 *
 * With DEPTH 0 it measures memory instead: it reads the server's resident
 * set size, opens the connections, echoes one message on each, holds them
 * idle for SECONDS seconds and reads the resident set size again.
 *
 * After WARMUP_S seconds it measures for SECONDS seconds: requests
 * completed, latency percentiles (time from sending a message to receiving
 * its last byte), its own CPU time and the server's (read from
 * /proc/SERVER_PID/stat at both ends of the window).  It prints one JSON
 * object.  One thread, epoll, non-blocking sockets: written to cost far
 * less per request than the servers it measures, and it reports its own CPU
 * use so that this can be checked.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <limits.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif
#include <unistd.h>

#include "measure.h"

#define HIST_BUCKETS 200000 /* 1 us buckets up to 200 ms */

struct conn {
    int fd;
    uint32_t id;
    uint64_t sent;      /* bytes written */
    uint64_t received;  /* bytes read and verified */
    uint64_t queued;    /* bytes that should have been written so far */
    uint64_t *stamps;   /* send time of each in-flight message (ring) */
    unsigned head, tail;
    int want_out;
    int connecting;     /* churn: a non-blocking connect in progress */
    uint64_t started;   /* churn: when this cycle's connect began */
    void *ssl;          /* tls: the connection's SSL object */
};

static struct sockaddr_storage peer;
static socklen_t peer_len;
static int churn_mode, tls_mode;
static uint32_t next_id;

static size_t msg_size;
static unsigned depth;
static uint64_t hist[HIST_BUCKETS + 1];
static uint64_t hist_count;
static int measuring;
static uint64_t requests;
static uint64_t total_requests;
static uint64_t errors;
static uint64_t verify_failures;

#define PATTERN_P 65521u
/* Any PATTERN_WINDOW bytes of a stream lie contiguously in the table. */
#define PATTERN_WINDOW 262144u
static unsigned char pattern_table[PATTERN_P + PATTERN_WINDOW];

static void pattern_init(void)
{
    uint32_t x = 2463534242u, i;
    for (i = 0; i < PATTERN_P; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pattern_table[i] = (unsigned char)x;
    }
    for (; i < sizeof(pattern_table); i++)
        pattern_table[i] = pattern_table[i - PATTERN_P];
}

/* Where connection id's stream is in the table at offset off. */
static inline const unsigned char *pattern_at(uint32_t id, uint64_t off)
{
    return pattern_table + (off + (uint64_t)id * 977u) % PATTERN_P;
}

static inline uint8_t pattern(uint32_t id, uint64_t off)
{
    return *pattern_at(id, off);
}

/* Whether src holds n bytes of connection id's stream from offset off. */
static int pattern_check(const unsigned char *src, uint32_t id, uint64_t off,
                         size_t n)
{
    while (n) {
        size_t k = n < PATTERN_WINDOW ? n : PATTERN_WINDOW;
        if (memcmp(src, pattern_at(id, off), k) != 0)
            return 0;
        src += k;
        off += k;
        n -= k;
    }
    return 1;
}

static unsigned char *sendbuf; /* the memory scenario's warm-up messages */

/* Resident set size of process pid, in KiB. */
static long rss_of(int pid)
{
    char path[64], line[256];
    FILE *f;
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static void sleep_s(double s)
{
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}


#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;

/* An SSL call's failure as send/recv report theirs: EAGAIN to wait. */
static ssize_t tls_failed(struct conn *c, int rc)
{
    switch (SSL_get_error(c->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        errno = EPROTO;
        return -1;
    }
}
#endif

static ssize_t io_send(struct conn *c, const void *buf, size_t n)
{
#ifdef LOADGEN_TLS
    if (c->ssl) {
        int w = SSL_write(c->ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
        return w > 0 ? w : tls_failed(c, w);
    }
#endif
    return send(c->fd, buf, n, MSG_NOSIGNAL);
}

static ssize_t io_recv(struct conn *c, void *buf, size_t n)
{
#ifdef LOADGEN_TLS
    if (c->ssl) {
        int r = SSL_read(c->ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
        return r > 0 ? r : tls_failed(c, r);
    }
#endif
    return recv(c->fd, buf, n, 0);
}

/* Where HOST PORT (or unix:PATH) is, into peer. */
static int resolve(const char *host, int port)
{
    if (strncmp(host, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&peer;
        if (strlen(host + 5) >= sizeof(un->sun_path))
            return -1;
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, host + 5);
        peer_len = sizeof(*un);
        return 0;
    }
    {
        struct addrinfo hints, *ai;
        char portstr[16];
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        snprintf(portstr, sizeof(portstr), "%d", port);
        if (getaddrinfo(host, portstr, &hints, &ai) != 0)
            return -1;
        memcpy(&peer, ai->ai_addr, ai->ai_addrlen);
        peer_len = ai->ai_addrlen;
        freeaddrinfo(ai);
        return 0;
    }
}

static int new_socket(int flags)
{
    int one = 1;
    int fd = socket(peer.ss_family, SOCK_STREAM | flags, 0);
    if (fd >= 0 && peer.ss_family != AF_UNIX)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static int flush_out(struct conn *c)
{
    while (c->sent < c->queued) {
        uint64_t n = c->queued - c->sent;
        ssize_t w;
        /* Straight from the table, which holds any window of the stream
         * contiguously: no copy into a send buffer first. */
        if (n > PATTERN_WINDOW)
            n = PATTERN_WINDOW;
        w = io_send(c, pattern_at(c->id, c->sent), n);
        if (w < 0) {
            if (errno == EAGAIN)
                return 1;
            return -1;
        }
        c->sent += w;
    }
    return 0;
}

static void queue_message(struct conn *c, uint64_t t)
{
    c->stamps[c->head % depth] = t;
    c->head++;
    c->queued += msg_size;
}

/* churn: open connection c's next cycle, non-blocking. */
static int start_cycle(struct conn *c, int epfd, uint64_t t)
{
    struct epoll_event ev;
    c->fd = new_socket(SOCK_NONBLOCK);
    if (c->fd < 0)
        return -1;
    c->id = next_id++;
    c->sent = c->received = c->queued = 0;
    c->head = c->tail = 0;
    c->started = t;
    c->connecting = 1;
    c->want_out = 1;
    if (connect(c->fd, (struct sockaddr *)&peer, peer_len) < 0 &&
        errno != EINPROGRESS) {
        close(c->fd);
        return -1;
    }
    ev.events = EPOLLOUT;
    ev.data.ptr = c;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

/* Connect c blocking, then make it non-blocking (and shake hands). */
static int open_stream(struct conn *c)
{
    c->fd = new_socket(0);
    if (c->fd < 0) {
        perror("socket");
        return -1;
    }
    /* Connect blocking: simple and the connect phase is not measured. */
    while (connect(c->fd, (struct sockaddr *)&peer, peer_len) < 0) {
        if (errno == EINTR)
            continue;
        perror("connect");
        return -1;
    }
#ifdef LOADGEN_TLS
    if (tls_mode) {
        SSL *ssl = SSL_new(tls_ctx);
        SSL_set_fd(ssl, c->fd);
        if (SSL_connect(ssl) != 1) {
            ERR_print_errors_fp(stderr);
            return -1;
        }
        c->ssl = ssl;
    }
#endif
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    return 0;
}

int main(int argc, char **argv)
{
    const char *host, *mode = "stream";
    int port, nconns, server_pid, epfd, i;
    double warmup, seconds;
    struct conn *conns;
    struct epoll_event ev, *events;
    unsigned char *rbuf;
    uint64_t t_start, t_measure = 0, t_end;
    double cpu_server0 = 0, cpu_server1 = 0, cpu_self0 = 0, cpu_self1 = 0;
    double user_server0 = 0, user_server1 = 0;
    struct rlimit rl;

    if (argc != 9 && argc != 10) {
        fprintf(stderr,
                "usage: %s HOST PORT CONNECTIONS SIZE DEPTH WARMUP_S SECONDS "
                "SERVER_PID [stream|churn|tls]\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = atoi(argv[2]);
    nconns = atoi(argv[3]);
    msg_size = strtoull(argv[4], NULL, 10);
    depth = (unsigned)atoi(argv[5]);
    warmup = atof(argv[6]);
    seconds = atof(argv[7]);
    server_pid = atoi(argv[8]);
    if (argc == 10)
        mode = argv[9];
    churn_mode = strcmp(mode, "churn") == 0;
    tls_mode = strcmp(mode, "tls") == 0;
    if (nconns <= 0 || msg_size == 0 ||
        (!churn_mode && !tls_mode && strcmp(mode, "stream") != 0) ||
        (churn_mode && depth != 1)) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
#ifdef LOADGEN_TLS
    if (tls_mode) {
        tls_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
#else
    if (tls_mode) {
        fprintf(stderr, "built without TLS (-DLOADGEN_TLS)\n");
        return 2;
    }
#endif

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nconns + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    if (resolve(host, port) != 0) {
        fprintf(stderr, "cannot resolve %s\n", host);
        return 2;
    }

    long rss_before = 0;
    int idle = depth == 0;
    sendbuf = malloc(65536);
    rbuf = malloc(262144);
    pattern_init();
    if (idle) {
        /* Warm the server up first (its allocator, any buffer pool it
         * keeps): 100 connections, 32 echoes each, then closed.  What
         * remains is the cost of the idle connections alone. */
        int w, k;
        depth = 1;
        for (w = 0; w < 100; w++) {
            int fd = new_socket(0);
            if (fd < 0 || connect(fd, (struct sockaddr *)&peer, peer_len) < 0) {
                perror("warm-up connect");
                return 1;
            }
            for (k = 0; k < 32; k++) {
                size_t got = 0;
                memset(sendbuf, k, msg_size);
                if (send(fd, sendbuf, msg_size, MSG_NOSIGNAL) < 0)
                    break;
                while (got < msg_size) {
                    ssize_t r = recv(fd, rbuf, msg_size - got, 0);
                    if (r <= 0)
                        break;
                    got += r;
                }
            }
            close(fd);
        }
        sleep_s(0.5);
        rss_before = rss_of(server_pid);
    }
    conns = calloc(nconns, sizeof(*conns));
    events = calloc(1024, sizeof(*events));
    epfd = epoll_create1(0);

    for (i = 0; i < nconns && !churn_mode; i++) {
        struct conn *c = &conns[i];
        c->id = next_id++;
        c->stamps = calloc(depth, sizeof(uint64_t));
        if (open_stream(c) < 0)
            return 1;
        ev.events = EPOLLIN;
        ev.data.ptr = c;
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }

    if (idle) {
        /* One echo per connection, blocking, then hold them all idle. */
        long rss_after;
        uint64_t echoed = 0;
        for (i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            queue_message(c, now_ns());
            while (flush_out(c) > 0)
                sleep_s(0.001);
        }
        for (i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            while (c->received < msg_size) {
                ssize_t r = recv(c->fd, rbuf, msg_size - c->received, 0);
                if (r > 0) {
                    if (!pattern_check(rbuf, c->id, c->received, r))
                        verify_failures++;
                    c->received += r;
                } else if (r < 0 && errno == EAGAIN) {
                    sleep_s(0.0005);
                } else {
                    errors++;
                    break;
                }
            }
            echoed += c->received;
        }
        sleep_s(seconds);
        rss_after = rss_of(server_pid);
        printf("{\"connections\": %d, \"idle\": true, \"server_rss_before_kib\": "
               "%ld, \"server_rss_after_kib\": %ld, \"bytes_per_connection\": "
               "%.0f, \"errors\": %llu, \"verify_failures\": %llu, "
               "\"verified_bytes\": %llu}\n",
               nconns, rss_before, rss_after,
               (rss_after - rss_before) * 1024.0 / nconns,
               (unsigned long long)errors, (unsigned long long)verify_failures,
               (unsigned long long)echoed);
        return verify_failures || errors ? 3 : 0;
    }

    t_start = now_ns();
    for (i = 0; i < nconns; i++) {
        unsigned k;
        if (churn_mode) {
            conns[i].stamps = calloc(1, sizeof(uint64_t));
            if (start_cycle(&conns[i], epfd, t_start) < 0) {
                perror("connect");
                return 1;
            }
            continue;
        }
        for (k = 0; k < depth; k++)
            queue_message(&conns[i], t_start);
        if (flush_out(&conns[i]) > 0) {
            ev.events = EPOLLIN | EPOLLOUT;
            ev.data.ptr = &conns[i];
            epoll_ctl(epfd, EPOLL_CTL_MOD, conns[i].fd, &ev);
            conns[i].want_out = 1;
        }
    }

    t_end = t_start + (uint64_t)((warmup + seconds) * 1e9);
    for (;;) {
        int n, k;
        uint64_t t = now_ns();
        if (!measuring && t >= t_start + (uint64_t)(warmup * 1e9)) {
            measuring = 1;
            t_measure = t;
            cpu_server0 = cpu_of(server_pid, &user_server0);
            cpu_self0 = self_cpu();
        }
        if (t >= t_end)
            break;
        n = epoll_wait(epfd, events, 1024, 100);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (k = 0; k < n; k++) {
            struct conn *c = events[k].data.ptr;
            int cycle_done = 0;
            if (c->connecting) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    errors++;
                    goto dead;
                }
                c->connecting = 0;
                queue_message(c, c->started);
            } else if (events[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                for (;;) {
                    ssize_t r = io_recv(c, rbuf, 262144);
                    if (r < 0) {
                        if (errno == EAGAIN)
                            break;
                        errors++;
                        goto dead;
                    }
                    if (r == 0) {
                        errors++;
                        goto dead;
                    }
                    if (!pattern_check(rbuf, c->id, c->received, r))
                        verify_failures++;
                    {
                        uint64_t before = c->received / msg_size;
                        uint64_t after;
                        c->received += r;
                        after = c->received / msg_size;
                        t = now_ns();
                        for (; before < after; before++) {
                            uint64_t sent_at = c->stamps[c->tail % depth];
                            c->tail++;
                            total_requests++;
                            if (measuring) {
                                uint64_t us = (t - sent_at) / 1000;
                                requests++;
                                hist[us < HIST_BUCKETS ? us : HIST_BUCKETS]++;
                                hist_count++;
                            }
                            if (churn_mode)
                                cycle_done = 1;
                            else
                                queue_message(c, t);
                        }
                    }
                    /* A short read emptied the socket; TLS may still
                     * hold decrypted bytes, so it reads until EAGAIN. */
                    if ((size_t)r < 262144 && !c->ssl)
                        break;
                }
            }
            if (cycle_done) {
                /* The whole echo is in: close (a FIN; loopback reuses
                 * TIME_WAIT ports, net.ipv4.tcp_tw_reuse) and start the
                 * next cycle. */
                close(c->fd);
                if (start_cycle(c, epfd, now_ns()) < 0) {
                    errors++;
                    c->connecting = 0;
                }
                continue;
            }
            {
                int rc = flush_out(c);
                if (rc < 0) {
                    errors++;
                    goto dead;
                }
                if ((rc > 0) != c->want_out) {
                    c->want_out = rc > 0;
                    ev.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0);
                    ev.data.ptr = c;
                    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            continue;
        dead:
            epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
            if (churn_mode) {
                close(c->fd);
                if (start_cycle(c, epfd, now_ns()) < 0) {
                    /* This connection's cycles end here: counted, so that
                     * the run reports errors rather than a lower rate. */
                    errors++;
                    c->connecting = 0;
                }
            }
        }
    }
    {
        uint64_t t = now_ns();
        double elapsed = (t - t_measure) / 1e9;
        double p[4] = {0.50, 0.90, 0.99, 0.999};
        double pv[4] = {0, 0, 0, 0};
        uint64_t acc = 0;
        int b = 0, q;
        uint64_t verified = 0;
        cpu_server1 = cpu_of(server_pid, &user_server1);
        cpu_self1 = self_cpu();
        for (q = 0; q < 4; q++) {
            uint64_t target = (uint64_t)(p[q] * hist_count);
            while (b <= HIST_BUCKETS && acc + hist[b] <= target) {
                acc += hist[b];
                b++;
            }
            pv[q] = b;
        }
        for (i = 0; i < nconns; i++)
            verified += conns[i].received;
        printf("{\"connections\": %d, \"size\": %zu, \"depth\": %u, "
               "\"seconds\": %.3f, \"requests\": %llu, \"total_requests\": %llu, "
               "\"rps\": %.1f, "
               "\"p50_us\": %.0f, \"p90_us\": %.0f, \"p99_us\": %.0f, "
               "\"p999_us\": %.0f, \"errors\": %llu, "
               "\"verify_failures\": %llu, \"verified_bytes\": %llu, "
               "\"server_cpu_s\": %.3f, \"server_user_s\": %.3f, "
               "\"loadgen_cpu_s\": %.3f}\n",
               nconns, msg_size, depth, elapsed,
               (unsigned long long)requests, (unsigned long long)total_requests,
               requests / elapsed, pv[0], pv[1],
               pv[2], pv[3], (unsigned long long)errors,
               (unsigned long long)verify_failures,
               (unsigned long long)verified, cpu_server1 - cpu_server0,
               user_server1 - user_server0, cpu_self1 - cpu_self0);
    }
    return verify_failures ? 3 : 0;
}
