/*
 * churn: connection churn against an echo server.
 *
 *   churn HOST PORT CYCLES SIZE PARALLEL
 *
 * Runs CYCLES connect / send SIZE bytes / read them back / close cycles,
 * PARALLEL at a time (blocking sockets, one thread per slot).  Every echoed
 * byte is checked.  Alternate cycles close with a reset (SO_LINGER 0)
 * instead of a FIN, so the server sees both kinds of ending.  Prints one
 * JSON object; exits non-zero if any cycle failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct addrinfo *ai;
static long cycles, size;
static long next_cycle;
static long failures;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static long take(void)
{
    long n;
    pthread_mutex_lock(&lock);
    n = next_cycle < cycles ? next_cycle++ : -1;
    pthread_mutex_unlock(&lock);
    return n;
}

static void *slot(void *arg)
{
    unsigned char *out = malloc(size), *in = malloc(size);
    long n, i;
    (void)arg;
    while ((n = take()) >= 0) {
        int fd = socket(ai->ai_family, SOCK_STREAM, 0);
        long got = 0, ok = 1;
        for (i = 0; i < size; i++)
            out[i] = (unsigned char)(n * 31 + i);
        if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            send(fd, out, size, MSG_NOSIGNAL) != size) {
            ok = 0;
        }
        while (ok && got < size) {
            ssize_t r = recv(fd, in + got, size - got, 0);
            if (r <= 0)
                ok = 0;
            else
                got += r;
        }
        if (ok && memcmp(in, out, size) != 0)
            ok = 0;
        if (n % 2) {
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        if (fd >= 0)
            close(fd);
        if (!ok) {
            pthread_mutex_lock(&lock);
            failures++;
            pthread_mutex_unlock(&lock);
        }
    }
    free(out);
    free(in);
    return NULL;
}

int main(int argc, char **argv)
{
    struct addrinfo hints;
    int parallel, i;
    pthread_t *threads;
    struct timespec t0, t1;
    double elapsed;

    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT CYCLES SIZE PARALLEL\n", argv[0]);
        return 2;
    }
    cycles = atol(argv[3]);
    size = atol(argv[4]);
    parallel = atoi(argv[5]);
    if (size <= 0 || parallel <= 0)
        return 2;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai) != 0) {
        fprintf(stderr, "cannot resolve %s\n", argv[1]);
        return 2;
    }
    threads = calloc(parallel, sizeof(*threads));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < parallel; i++)
        pthread_create(&threads[i], NULL, slot, NULL);
    for (i = 0; i < parallel; i++)
        pthread_join(threads[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    elapsed = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("{\"cycles\": %ld, \"failures\": %ld, \"seconds\": %.3f, "
           "\"cycles_per_s\": %.0f}\n",
           cycles, failures, elapsed, cycles / elapsed);
    return failures ? 3 : 0;
}
