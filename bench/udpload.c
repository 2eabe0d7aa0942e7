/*
 * udpload: a closed-loop UDP echo load generator for the uringreactor
 * benchmarks.
 *
 *   udpload HOST PORT SOCKETS IN_FLIGHT SIZE WARMUP_S SECONDS SERVER_PID
 *
 * Opens SOCKETS UDP sockets connected to HOST PORT and keeps IN_FLIGHT
 * datagrams of SIZE bytes in flight among them (IN_FLIGHT / SOCKETS per
 * socket); each echoed datagram is checked and the next one sent at once.
 * A datagram carries its slot and sequence number in its first 8 bytes
 * and a pattern depending on both in the rest, so a server that
 * truncates, corrupts, duplicates or misroutes datagrams is caught; a
 * datagram not echoed within 200 ms counts as lost and its slot moves on
 * to the next sequence number (a late echo of it is then counted, not
 * taken for the new one).
 *
 * After WARMUP_S seconds it measures for SECONDS seconds: datagrams echoed,
 * latency percentiles, its own CPU time and the server's (from
 * /proc/SERVER_PID/stat at both ends of the window).  Prints one JSON
 * object, in the form bench/loadgen.c prints (a "request" is a datagram
 * echoed); exits non-zero if any echo failed its check.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "measure.h"

#define HIST_BUCKETS 200000 /* 1 us buckets up to 200 ms */
#define LOST_AFTER_NS 200000000ull
#define HEADER 8
#define PATTERN_P 65521u
#define MAX_DATAGRAM 65507

static uint64_t hist[HIST_BUCKETS + 1];
static unsigned char table[PATTERN_P + MAX_DATAGRAM];

struct slot {
    int fd;
    uint32_t seq;
    uint64_t sent_at;
};

/* The payload of slot s's datagram number seq: a window of the table. */
static const unsigned char *payload(uint32_t s, uint32_t seq)
{
    return table + ((uint64_t)s * 977u + (uint64_t)seq * 131u) % PATTERN_P;
}

static size_t size;
static unsigned char *out;

static int send_slot(struct slot *slots, uint32_t s, uint64_t t)
{
    uint32_t header[2] = {s, slots[s].seq};
    memcpy(out, header, HEADER);
    memcpy(out + HEADER, payload(s, slots[s].seq), size - HEADER);
    slots[s].sent_at = t;
    if (send(slots[s].fd, out, size, 0) < 0 && errno != EAGAIN &&
        errno != ECONNREFUSED)
        return -1;
    /* (A full send buffer or a refusal: the slot times out and moves on.) */
    return 0;
}

int main(int argc, char **argv)
{
    struct addrinfo hints, *ai;
    int nsockets, inflight, server_pid, epfd, i, measuring = 0;
    double warmup, seconds, cpu_server0 = 0, cpu_self0 = 0;
    uint64_t requests = 0, total = 0, lost = 0, late = 0, bad = 0, hist_count = 0;
    uint64_t t_start, t_measure = 0, t_end, last_scan;
    struct slot *slots;
    struct epoll_event ev, events[256];
    unsigned char *in;
    uint32_t x = 2463534242u;

    if (argc != 9) {
        fprintf(stderr,
                "usage: %s HOST PORT SOCKETS IN_FLIGHT SIZE WARMUP_S SECONDS "
                "SERVER_PID\n", argv[0]);
        return 2;
    }
    nsockets = atoi(argv[3]);
    inflight = atoi(argv[4]);
    size = strtoul(argv[5], NULL, 10);
    warmup = atof(argv[6]);
    seconds = atof(argv[7]);
    server_pid = atoi(argv[8]);
    if (nsockets <= 0 || inflight < nsockets || size < HEADER || size > MAX_DATAGRAM) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai) != 0) {
        fprintf(stderr, "cannot resolve %s\n", argv[1]);
        return 2;
    }
    for (i = 0; i < (int)sizeof(table); i++) {
        if (i < (int)PATTERN_P) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            table[i] = (unsigned char)x;
        } else {
            table[i] = table[i - PATTERN_P];
        }
    }
    out = malloc(size);
    in = malloc(MAX_DATAGRAM + 1);
    slots = calloc(inflight, sizeof(*slots));
    epfd = epoll_create1(0);
    for (i = 0; i < nsockets; i++) {
        int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        int s;
        if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            perror("socket");
            return 1;
        }
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        for (s = i; s < inflight; s += nsockets)
            slots[s].fd = fd;
    }

    t_start = last_scan = now_ns();
    for (i = 0; i < inflight; i++)
        if (send_slot(slots, i, t_start) < 0) {
            perror("send");
            return 1;
        }
    t_end = t_start + (uint64_t)((warmup + seconds) * 1e9);
    for (;;) {
        uint64_t t = now_ns();
        int n, k;
        if (!measuring && t >= t_start + (uint64_t)(warmup * 1e9)) {
            measuring = 1;
            t_measure = t;
            cpu_server0 = cpu_of(server_pid, NULL);
            cpu_self0 = self_cpu();
        }
        if (t >= t_end)
            break;
        if (t - last_scan > 10000000ull) {
            last_scan = t;
            for (i = 0; i < inflight; i++)
                if (t - slots[i].sent_at > LOST_AFTER_NS) {
                    lost++;
                    slots[i].seq++;
                    if (send_slot(slots, i, t) < 0) {
                        perror("send");
                        return 1;
                    }
                }
        }
        n = epoll_wait(epfd, events, 256, 10);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (k = 0; k < n; k++) {
            int fd = events[k].data.fd;
            for (;;) {
                uint32_t header[2];
                ssize_t r = recv(fd, in, MAX_DATAGRAM + 1, 0);
                if (r < 0)
                    break; /* EAGAIN, or a refusal the timeout handles */
                t = now_ns();
                if ((size_t)r != size) {
                    bad++;
                    continue;
                }
                memcpy(header, in, HEADER);
                if (header[0] >= (uint32_t)inflight || slots[header[0]].fd != fd) {
                    bad++;
                    continue;
                }
                if (header[1] != slots[header[0]].seq) {
                    /* The echo of a datagram already counted lost, or a
                     * duplicate. */
                    late++;
                    continue;
                }
                if (memcmp(in + HEADER, payload(header[0], header[1]),
                           size - HEADER) != 0) {
                    bad++;
                    continue;
                }
                total++;
                if (measuring) {
                    uint64_t us = (t - slots[header[0]].sent_at) / 1000;
                    requests++;
                    hist[us < HIST_BUCKETS ? us : HIST_BUCKETS]++;
                    hist_count++;
                }
                slots[header[0]].seq++;
                if (send_slot(slots, header[0], t) < 0) {
                    perror("send");
                    return 1;
                }
            }
        }
    }
    {
        double elapsed = (now_ns() - t_measure) / 1e9;
        double p[4] = {0.50, 0.90, 0.99, 0.999}, pv[4] = {0, 0, 0, 0};
        uint64_t acc = 0;
        int b = 0, q;
        double cpu_server = cpu_of(server_pid, NULL) - cpu_server0;
        double cpu_self = self_cpu() - cpu_self0;
        for (q = 0; q < 4; q++) {
            uint64_t target = (uint64_t)(p[q] * hist_count);
            while (b <= HIST_BUCKETS && acc + hist[b] <= target) {
                acc += hist[b];
                b++;
            }
            pv[q] = b;
        }
        printf("{\"connections\": %d, \"in_flight\": %d, \"size\": %zu, "
               "\"seconds\": %.3f, \"requests\": %llu, \"total_requests\": %llu, "
               "\"rps\": %.1f, \"p50_us\": %.0f, \"p90_us\": %.0f, "
               "\"p99_us\": %.0f, \"p999_us\": %.0f, \"errors\": 0, "
               "\"verify_failures\": %llu, \"lost\": %llu, \"late\": %llu, "
               "\"server_cpu_s\": %.3f, \"loadgen_cpu_s\": %.3f}\n",
               nsockets, inflight, size, elapsed, (unsigned long long)requests,
               (unsigned long long)total, requests / elapsed, pv[0], pv[1], pv[2],
               pv[3], (unsigned long long)bad, (unsigned long long)lost,
               (unsigned long long)late, cpu_server, cpu_self);
    }
    return bad ? 3 : 0;
}
