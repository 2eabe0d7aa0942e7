/*
 * echo_server: the benchmarks' native reference, a single-threaded epoll
 * echo server in C with no per-request work beyond the system calls.  Its
 * numbers show what the machine and the load generator allow, the ceiling
 * for any Python server.
 *
 *   echo_server [PORT]
 *
 * Prints "PORT n" once listening and, on SIGTERM, one JSON line like the
 * Python servers (without counters).
 *
 * Level-triggered: each readable connection gets one recv of up to 256 KiB,
 * sent straight back; what the socket does not take waits in the
 * connection's buffer, and the connection reads nothing more until that is
 * written.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 262144

struct conn {
    int fd;
    char *pending; /* unsent output, or NULL */
    size_t off, len;
};

static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

static void drop(int epfd, struct conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Send what c still owes; 1 when all of it is out, 0 if not, -1 on error. */
static int flush_pending(struct conn *c)
{
    while (c->off < c->len) {
        ssize_t w = send(c->fd, c->pending + c->off, c->len - c->off,
                         MSG_NOSIGNAL);
        if (w < 0)
            return errno == EAGAIN ? 0 : -1;
        c->off += w;
    }
    free(c->pending);
    c->pending = NULL;
    return 1;
}

int main(int argc, char **argv)
{
    static char buf[BUF_SIZE];
    struct epoll_event ev, events[1024];
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    struct sigaction sa;
    struct rlimit rl;
    int lfd, epfd, one = 1;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(argc > 1 ? atoi(argv[1]) : 0);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0) {
        perror("listen");
        return 1;
    }
    epfd = epoll_create1(0);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    printf("PORT %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    while (!stopping) {
        int n = epoll_wait(epfd, events, 1024, -1), k;
        for (k = 0; k < n; k++) {
            struct conn *c = events[k].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    c = calloc(1, sizeof(*c));
                    c->fd = fd;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    ev.events = EPOLLIN;
                    ev.data.ptr = c;
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (c->pending) {
                int rc = flush_pending(c);
                if (rc < 0) {
                    drop(epfd, c);
                } else if (rc > 0) {
                    ev.events = EPOLLIN;
                    ev.data.ptr = c;
                    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                }
                continue;
            }
            {
                ssize_t r = recv(c->fd, buf, sizeof(buf), 0), w;
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN)
                        continue;
                    drop(epfd, c);
                    continue;
                }
                w = send(c->fd, buf, r, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) {
                    drop(epfd, c);
                    continue;
                }
                if (w < r) {
                    if (w < 0)
                        w = 0;
                    c->pending = malloc(r - w);
                    memcpy(c->pending, buf + w, r - w);
                    c->off = 0;
                    c->len = r - w;
                    ev.events = EPOLLOUT;
                    ev.data.ptr = c;
                    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
    }
    printf("{\"counters\": null}\n");
    return 0;
}
