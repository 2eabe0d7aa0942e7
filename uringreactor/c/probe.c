/*
 * What the running kernel's io_uring can do, found out by asking it.
 *
 * Kernel versions say little: distributions backport io_uring features
 * (RHEL 9's 5.14 has many from 6.x), and some point releases carry
 * regressions.  So each optional feature the reactor uses is tried here,
 * once per process, on small rings of its own: setup flags by creating a
 * ring with them, operation flags (multishot accept, recv and recvmsg) by
 * running the operation on a socket pair and looking at the completion.
 * Each result is 0 (works) or the negative errno the kernel answered.
 */

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "probe.h"

#define PROBE_BGID 7
#define PROBE_NBUFS 4
#define PROBE_BUFSIZE 256
#define UD_CANCEL 0xcafe

static int try_setup(unsigned flags)
{
    struct io_uring ring;
    struct io_uring_params p;
    int ret;

    memset(&p, 0, sizeof(p));
    p.flags = flags;
    ret = io_uring_queue_init_params(4, &ring, &p);
    if (ret == 0)
        io_uring_queue_exit(&ring);
    return ret;
}

/* Submit what is queued and wait (up to a second) for the next completion
 * of ud, consuming the others. */
static int complete(struct io_uring *ring, __u64 ud, int *res, unsigned *flags)
{
    struct __kernel_timespec ts = {.tv_sec = 1, .tv_nsec = 0};
    struct io_uring_cqe *cqe;
    int ret;

    ret = io_uring_submit(ring);
    if (ret < 0)
        return ret;
    for (;;) {
        ret = io_uring_wait_cqe_timeout(ring, &cqe, &ts);
        if (ret == -EINTR)
            continue;
        if (ret < 0)
            return ret;
        if (cqe->user_data == ud) {
            *res = cqe->res;
            *flags = cqe->flags;
            io_uring_cqe_seen(ring, cqe);
            return 0;
        }
        io_uring_cqe_seen(ring, cqe);
    }
}

/* Cancel a multishot operation and wait for its final completion. */
static int finish(struct io_uring *ring, __u64 ud)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    unsigned flags;
    int res, ret;

    if (!sqe)
        return -EBUSY;
    io_uring_prep_cancel64(sqe, ud, 0);
    sqe->user_data = UD_CANCEL;
    do {
        ret = complete(ring, ud, &res, &flags);
    } while (ret == 0 && (flags & IORING_CQE_F_MORE));
    return ret;
}

/* Whether an operation answered as a multishot one: data, and more to
 * come.  An old kernel rejects the flag with EINVAL. */
static int multishot_result(struct io_uring *ring, __u64 ud, int *fd_out)
{
    unsigned flags;
    int res, ret;

    ret = complete(ring, ud, &res, &flags);
    if (ret < 0)
        return ret;
    if (res < 0)
        return res;
    if (fd_out)
        *fd_out = res;
    if (!(flags & IORING_CQE_F_MORE))
        return -EOPNOTSUPP;
    return finish(ring, ud);
}

static int probe_accept(struct io_uring *ring)
{
    struct sockaddr_un addr;
    socklen_t len = sizeof(sa_family_t);
    struct io_uring_sqe *sqe;
    int lfd, cfd = -1, afd = -1, ret;

    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return -errno;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    /* An address of just the family: the kernel picks an abstract name. */
    if (bind(lfd, (struct sockaddr *)&addr, len) < 0 || listen(lfd, 4) < 0) {
        ret = -errno;
        goto out;
    }
    len = sizeof(addr);
    cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (cfd < 0 || getsockname(lfd, (struct sockaddr *)&addr, &len) < 0 ||
        connect(cfd, (struct sockaddr *)&addr, len) < 0) {
        ret = -errno;
        goto out;
    }
    sqe = io_uring_get_sqe(ring);
    if (!sqe) {
        ret = -EBUSY;
        goto out;
    }
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    sqe->user_data = 1;
    ret = multishot_result(ring, 1, &afd);
out:
    if (afd >= 0)
        close(afd);
    if (cfd >= 0)
        close(cfd);
    close(lfd);
    return ret;
}

static int probe_recv(struct io_uring *ring, int type)
{
    struct io_uring_sqe *sqe;
    struct msghdr msg;
    int sv[2], ret;
    __u64 ud = type == SOCK_STREAM ? 2 : 3;

    if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    if (write(sv[1], "x", 1) != 1) {
        ret = -errno;
        goto out;
    }
    sqe = io_uring_get_sqe(ring);
    if (!sqe) {
        ret = -EBUSY;
        goto out;
    }
    if (type == SOCK_STREAM) {
        io_uring_prep_recv_multishot(sqe, sv[0], NULL, 0, 0);
    } else {
        memset(&msg, 0, sizeof(msg));
        io_uring_prep_recvmsg_multishot(sqe, sv[0], &msg, 0);
    }
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = PROBE_BGID;
    sqe->user_data = ud;
    ret = multishot_result(ring, ud, NULL);
out:
    close(sv[0]);
    close(sv[1]);
    return ret;
}

/* A provided-buffer ring with a few buffers, for the receive probes. */
static int setup_buffers(struct io_uring *ring, void **mem, size_t *size)
{
    struct io_uring_buf_reg reg;
    struct io_uring_buf_ring *br;
    char *bufs;
    int i, ret;

    *size = 4096 + PROBE_NBUFS * PROBE_BUFSIZE;
    *mem = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
                -1, 0);
    if (*mem == MAP_FAILED) {
        *mem = NULL;
        return -errno;
    }
    br = (struct io_uring_buf_ring *)*mem;
    bufs = (char *)*mem + 4096;
    io_uring_buf_ring_init(br);
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)(uintptr_t)br;
    reg.ring_entries = PROBE_NBUFS;
    reg.bgid = PROBE_BGID;
    ret = io_uring_register_buf_ring(ring, &reg, 0);
    if (ret) {
        munmap(*mem, *size);
        *mem = NULL;
        return ret < 0 ? ret : -ret;
    }
    for (i = 0; i < PROBE_NBUFS; i++)
        io_uring_buf_ring_add(br, bufs + i * PROBE_BUFSIZE, PROBE_BUFSIZE, i,
                              io_uring_buf_ring_mask(PROBE_NBUFS), i);
    io_uring_buf_ring_advance(br, PROBE_NBUFS);
    return 0;
}

int ur_probe_kernel(struct ur_probe *out)
{
    struct io_uring ring;
    struct io_uring_params p;
    void *mem = NULL;
    size_t size = 0;
    int ret;

    memset(out, 0, sizeof(*out));
    memset(&p, 0, sizeof(p));
    ret = io_uring_queue_init_params(8, &ring, &p);
    if (ret < 0)
        return ret;
    out->ring_features = p.features;
    out->submit_all = try_setup(IORING_SETUP_SUBMIT_ALL);
    out->coop_taskrun = try_setup(IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    out->defer_taskrun = try_setup(IORING_SETUP_SINGLE_ISSUER |
                                   IORING_SETUP_DEFER_TASKRUN |
                                   IORING_SETUP_R_DISABLED);
    out->defer_taskrun_flag = try_setup(IORING_SETUP_SINGLE_ISSUER |
                                        IORING_SETUP_DEFER_TASKRUN |
                                        IORING_SETUP_R_DISABLED |
                                        IORING_SETUP_TASKRUN_FLAG);
    ret = io_uring_register_ring_fd(&ring);
    out->ring_fd = ret < 0 ? ret : 0;
    out->multishot_accept = probe_accept(&ring);
    out->buf_ring = setup_buffers(&ring, &mem, &size);
    if (out->buf_ring == 0) {
        out->multishot_recv = probe_recv(&ring, SOCK_STREAM);
        out->multishot_recvmsg = probe_recv(&ring, SOCK_DGRAM);
    } else {
        out->multishot_recv = out->buf_ring;
        out->multishot_recvmsg = out->buf_ring;
    }
    /* A probe that timed out may leave an operation in flight: then the
     * buffers are left mapped rather than freed under the kernel. */
    io_uring_queue_exit(&ring);
    if (mem && out->multishot_recv != -ETIME && out->multishot_recvmsg != -ETIME)
        munmap(mem, size);
    return 0;
}
