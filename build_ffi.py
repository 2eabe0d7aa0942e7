"""
cffi build script for C{uringreactor._liburing}, the binding to liburing.

The binding is deliberately small.  Python never touches a submission or
completion queue entry directly: every operation is prepared by one C call
that takes a free SQE, fills it in and tags it with its C{user_data}, and
completions are copied out in batches into a flat array of
C{(user_data, res, flags)} records.  Each crossing from Python into C costs
tens of nanoseconds, so the helpers are shaped to need one crossing per
operation and one per batch of completions.

Helpers newer than liburing 2.3 (Debian 12) are written out here rather than
required from the library.

C{user_data} layout: the low 8 bits hold the operation kind (see C{UR_KIND_*}),
the rest a serial number chosen by Python.  The kind lets the C side finish
what Python can no longer do when a ring is torn down (close sockets that a
cancelled accept still produced) and keeps an exact count of operations the
kernel still owns.
"""

from cffi import FFI

CDEF = r"""
#define IORING_SETUP_CQSIZE ...
#define IORING_SETUP_R_DISABLED ...
#define IORING_SETUP_SUBMIT_ALL ...
#define IORING_SETUP_COOP_TASKRUN ...
#define IORING_SETUP_TASKRUN_FLAG ...
#define IORING_SETUP_SINGLE_ISSUER ...
#define IORING_SETUP_DEFER_TASKRUN ...

#define IORING_FEAT_NODROP ...
#define IORING_FEAT_FAST_POLL ...
#define IORING_FEAT_EXT_ARG ...
#define IORING_FEAT_CQE_SKIP ...

#define IORING_CQE_F_BUFFER ...
#define IORING_CQE_F_MORE ...
#define IORING_CQE_F_SOCK_NONEMPTY ...
#define IORING_CQE_BUFFER_SHIFT ...

#define IORING_OP_POLL_ADD ...
#define IORING_OP_ASYNC_CANCEL ...
#define IORING_OP_ACCEPT ...
#define IORING_OP_CONNECT ...
#define IORING_OP_SEND ...
#define IORING_OP_RECV ...
#define IORING_OP_SENDMSG ...
#define IORING_OP_RECVMSG ...
#define IORING_OP_PROVIDE_BUFFERS ...
#define IORING_OP_SEND_ZC ...

#define UR_KIND_INTERNAL ...
#define UR_KIND_POLL ...
#define UR_KIND_ACCEPT ...
#define UR_KIND_RECV ...
#define UR_KIND_SEND ...

struct iovec {
    void *iov_base;
    size_t iov_len;
};

struct ur_ring {
    unsigned setup_flags;
    unsigned features;
    unsigned sq_entries;
    unsigned cq_entries;
    int enabled;
    long long inflight;
    unsigned long long enters;
    unsigned long long sqes;
    unsigned long long cqes;
    unsigned long long sq_full;
    long long spin_max_ns;
    long long spin_ns;
    unsigned long long spins;
    unsigned long long spin_hits;
    ...;
};

struct ur_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};

struct io_uring_buf_ring { ...; };
struct ur_bufring {
    struct io_uring_buf_ring *br;
    char *base;
    unsigned nbufs;
    unsigned bufsize;
    int bgid;
    ...;
};

int ur_ring_init(struct ur_ring *r, unsigned entries, unsigned cq_entries,
                 unsigned flags);
void ur_ring_exit(struct ur_ring *r);
int ur_ring_enable(struct ur_ring *r);
int ur_ring_fd(struct ur_ring *r);
int ur_register_ring_fd(struct ur_ring *r);
int ur_probe_opcode(struct ur_ring *r, int opcode);
unsigned ur_sq_ready(struct ur_ring *r);

int ur_submit(struct ur_ring *r);
int ur_enter(struct ur_ring *r, int wait, long long timeout_ns);
int ur_reap(struct ur_ring *r, struct ur_cqe *out, int max);
int ur_drain(struct ur_ring *r, int timeout_ms);

int64_t ur_prep_poll(struct ur_ring *r, int fd, unsigned mask, int multishot,
                     unsigned kind);
int ur_prep_cancel(struct ur_ring *r, uint64_t target);
int64_t ur_prep_accept(struct ur_ring *r, int fd, void *addr, void *addrlen,
                       int flags, int multishot, unsigned kind);
int64_t ur_prep_recv(struct ur_ring *r, int fd, void *buf, size_t len,
                     int flags, unsigned kind);
int64_t ur_prep_recv_multishot(struct ur_ring *r, int fd, int bgid, int flags,
                               unsigned kind);
int64_t ur_prep_send(struct ur_ring *r, int fd, const char *buf, size_t len,
                     int flags, unsigned kind);
uintptr_t ur_address_of(const char *p);
int64_t ur_prep_sendv(struct ur_ring *r, int fd, struct iovec *iov,
                      int iovcnt, void *msghdr, int flags, unsigned kind);
size_t ur_msghdr_size(void);

#define UR_CONTROL_SIZE ...
#define UR_NAME_SIZE ...
#define UR_RECVMSG_OUT_SIZE ...
struct ur_msg { ...; };
int64_t ur_prep_recvmsg_multishot(struct ur_ring *r, int fd, struct ur_msg *m,
                                  unsigned namelen, unsigned controllen,
                                  int bgid, unsigned kind);
int64_t ur_prep_recvmsg_into(struct ur_ring *r, int fd, struct ur_msg *m,
                             char *buf, size_t len, unsigned namelen,
                             unsigned controllen, int bgid, unsigned kind);
int64_t ur_prep_sendmsg_to(struct ur_ring *r, int fd, struct ur_msg *m,
                           const char *buf, size_t len, const char *name,
                           unsigned namelen, int passfd, int flags, int link,
                           unsigned kind);
unsigned ur_msg_namelen(struct ur_msg *m);
size_t ur_msg_controllen(struct ur_msg *m);
int ur_msg_flags(struct ur_msg *m);
unsigned char *ur_msg_name(struct ur_msg *m);
unsigned char *ur_msg_control(struct ur_msg *m);

void ur_raise_malloc_thresholds(size_t size);

int ur_bufring_setup(struct ur_ring *r, struct ur_bufring *b, unsigned nbufs,
                     unsigned bufsize, int bgid);
void ur_bufring_free(struct ur_ring *r, struct ur_bufring *b);

struct ur_probe {
    unsigned ring_features;
    int submit_all;
    int coop_taskrun;
    int defer_taskrun;
    int defer_taskrun_flag;
    int ring_fd;
    int buf_ring;
    int multishot_accept;
    int multishot_recv;
    int multishot_recvmsg;
};
int ur_probe_kernel(struct ur_probe *out);
const char *ur_liburing_version(void);
"""

SOURCE = r"""
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <liburing.h>

#include "probe.h"

/* The liburing this module was built against: 2.4 and newer say so in
 * their header, older ones only through pkg-config at build time. */
const char *ur_liburing_version(void)
{
#if defined(IO_URING_VERSION_MAJOR)
#define UR_STR2(x) #x
#define UR_STR(x) UR_STR2(x)
    return UR_STR(IO_URING_VERSION_MAJOR) "." UR_STR(IO_URING_VERSION_MINOR);
#elif defined(UR_LIBURING_PKGVERSION)
    return UR_LIBURING_PKGVERSION;
#else
    return "unknown";
#endif
}

#define UR_KIND_INTERNAL 0
#define UR_KIND_POLL 1
#define UR_KIND_ACCEPT 2
#define UR_KIND_RECV 3
#define UR_KIND_SEND 4
#define UR_KIND(ud) ((unsigned)((ud) & 0xff))
/* user_data: bits 0-7 the kind, 8-31 the operation's slot in the ring's
 * table of operations in flight, 32-62 a serial number, so that a tag is
 * never reused while Python may still hold it. */
#define UR_SLOT_BITS 24
#define UR_SLOT(ud) ((uint32_t)(((ud) >> 8) & ((1u << UR_SLOT_BITS) - 1)))

#ifndef IORING_CQE_BUFFER_SHIFT
#define IORING_CQE_BUFFER_SHIFT 16
#endif

struct ur_ring {
    struct io_uring ring;
    unsigned setup_flags;
    unsigned features;
    unsigned sq_entries;         /* the sizes the kernel gave the rings */
    unsigned cq_entries;
    int enabled;
    long long inflight;          /* operations the kernel still owns */
    unsigned long long enters;   /* calls that may enter the kernel */
    unsigned long long sqes;     /* SQEs prepared */
    unsigned long long cqes;     /* CQEs reaped */
    unsigned long long sq_full;  /* submissions forced by a full SQ */
    long long spin_max_ns;       /* spin budget before blocking; 0: never */
    long long spin_ns;           /* current budget, adapted to the traffic */
    unsigned long long spins;    /* waits that spun first */
    unsigned long long spin_hits;/* ... and found work while spinning */
    unsigned long long cqes_at_wait; /* cqes when the last wait began */
    /* The operations the kernel owns: the user_data of each in its slot
     * (0 for a free slot), and a stack of free slots.  With it a ring
     * released without its event loop can cancel every operation by its
     * tag, on every kernel (IORING_ASYNC_CANCEL_ANY needs 5.19). */
    uint64_t *slots;
    uint32_t *free_slots;
    uint32_t nslots;
    uint32_t nfree;
    uint32_t serial;
};

struct ur_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};

/* A provided-buffer ring: its entries, and the area its buffers start in
 * (uringreactor._buffers decides which buffers the entries point to). */
struct ur_bufring {
    struct io_uring_buf_ring *br;
    char *base;
    size_t ring_bytes;
    unsigned nbufs;
    unsigned bufsize;
    int bgid;
};

int ur_ring_init(struct ur_ring *r, unsigned entries, unsigned cq_entries,
                 unsigned flags)
{
    struct io_uring_params p;
    int ret;

    memset(r, 0, sizeof(*r));
    memset(&p, 0, sizeof(p));
    p.flags = flags;
    if (cq_entries) {
        p.flags |= IORING_SETUP_CQSIZE;
        p.cq_entries = cq_entries;
    }
    ret = io_uring_queue_init_params(entries, &r->ring, &p);
    if (ret < 0)
        return ret;
    r->setup_flags = p.flags;
    r->features = p.features;
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;
    r->enabled = !(p.flags & IORING_SETUP_R_DISABLED);
    return 0;
}

void ur_ring_exit(struct ur_ring *r)
{
    io_uring_queue_exit(&r->ring);
    free(r->slots);
    free(r->free_slots);
    r->slots = NULL;
    r->free_slots = NULL;
    r->nslots = r->nfree = 0;
}

/* A ring created with IORING_SETUP_R_DISABLED takes its single issuer from
 * the thread that enables it: the one that runs the event loop. */
int ur_ring_enable(struct ur_ring *r)
{
    int ret;
    if (r->enabled)
        return 0;
    /* io_uring_enable_rings() is not exported by liburing 2.3. */
    ret = io_uring_register(r->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS,
                            NULL, 0);
    if (ret == 0)
        r->enabled = 1;
    return ret;
}

int ur_ring_fd(struct ur_ring *r)
{
    return r->ring.ring_fd;
}

int ur_register_ring_fd(struct ur_ring *r)
{
    int ret = io_uring_register_ring_fd(&r->ring);
    return ret < 0 ? ret : 0;
}

int ur_probe_opcode(struct ur_ring *r, int opcode)
{
    struct io_uring_probe *probe = io_uring_get_probe_ring(&r->ring);
    int ok;
    if (!probe)
        return -ENOSYS;
    ok = io_uring_opcode_supported(probe, opcode);
    io_uring_free_probe(probe);
    return ok;
}

unsigned ur_sq_ready(struct ur_ring *r)
{
    return io_uring_sq_ready(&r->ring);
}

/* Without IORING_SETUP_SUBMIT_ALL (before 5.18) the kernel stops submitting
 * at the first SQE it rejects (which completes with its error; on 5.10 one
 * naming a closed descriptor is rejected so, with EBADF) and leaves the rest
 * in the queue.  Submit those too, while that makes progress: a CQ that
 * overflowed (EBUSY) must be reaped first. */
static int ur_submit_rest(struct ur_ring *r, int ret)
{
    int more, i;

    for (i = 0; i < 16 && ret >= 0 && io_uring_sq_ready(&r->ring); i++) {
        r->enters++;
        more = io_uring_submit(&r->ring);
        if (more <= 0)
            break;
    }
    return ret;
}

int ur_submit(struct ur_ring *r)
{
    int ret;
    if (!r->enabled && (ret = ur_ring_enable(r)) < 0)
        return ret;
    r->enters++;
    return ur_submit_rest(r, io_uring_submit(&r->ring));
}

/* Submit everything queued and block for a completion, at most timeout_ns
 * (none for a negative timeout). */
static int ur_wait(struct ur_ring *r, long long timeout_ns)
{
    struct io_uring_cqe *cqe = NULL;
    struct __kernel_timespec ts;

    if (timeout_ns < 0)
        return io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, NULL, NULL);
    ts.tv_sec = timeout_ns / 1000000000LL;
    ts.tv_nsec = timeout_ns % 1000000000LL;
    return io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, &ts, NULL);
}

static long long ur_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Whether the kernel has something for us: completions in the CQ, or task
 * work (a finished recv, say) that an enter would turn into completions. */
static inline int ur_has_work(struct ur_ring *r)
{
    return io_uring_cq_ready(&r->ring) ||
           (IO_URING_READ_ONCE(*r->ring.sq.kflags) &
            (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW));
}

/* The most completions an iteration may have handled and still spin. */
#define UR_SPIN_MAX_BATCH 4

/* Spin up to budget_ns for work; 1 if some arrived. */
static int ur_spin(struct ur_ring *r, long long budget_ns)
{
    long long deadline = ur_now_ns() + budget_ns;
    unsigned i = 0;

    for (;;) {
        if (ur_has_work(r))
            return 1;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
        if (++i % 64 == 0 && ur_now_ns() >= deadline)
            return 0;
    }
}

/* Wait after spinning, as a waiting loop in the kernel would not: when the
 * next event comes within microseconds, as it does on a busy connection,
 * seeing it in user space saves the sleep, the wake-up and, in a virtual
 * machine, the exits these cost, which take more CPU than the spin.  The
 * budget adapts like the kernel's cpuidle haltpoll governor: it halves each
 * time the spin was in vain and the loop then slept for longer than the
 * maximum budget (the traffic is sparse: spinning only burns CPU), down to
 * zero, and doubles back up to the maximum each time an event came soon
 * after the spin gave up. */
static int ur_spin_then_wait(struct ur_ring *r, long long timeout_ns)
{
    long long budget = r->spin_ns, slept;
    unsigned long long handled = r->cqes - r->cqes_at_wait;
    int ret;

    r->cqes_at_wait = r->cqes;
    /* Only a loop that waits for its next few events spins.  One that
     * submits work, or handled a large batch since its last wait, is busy
     * moving data: a wait that returns at the first event would only split
     * its batches (and take two enters instead of one). */
    if (budget > 0 && (timeout_ns < 0 || timeout_ns > budget) &&
        handled <= UR_SPIN_MAX_BATCH && !io_uring_sq_ready(&r->ring)) {
        r->spins++;
        if (ur_spin(r, budget)) {
            r->spin_hits++;
            return io_uring_get_events(&r->ring);
        }
        if (timeout_ns > 0)
            timeout_ns -= budget;
    }
    slept = ur_now_ns();
    ret = ur_wait(r, timeout_ns);
    slept = ur_now_ns() - slept;
    if (slept > r->spin_max_ns) {
        r->spin_ns /= 2;
        if (r->spin_ns < r->spin_max_ns / 8)
            r->spin_ns = 0;
    } else if (ret != -ETIME && r->spin_ns < r->spin_max_ns) {
        r->spin_ns = r->spin_ns ? r->spin_ns * 2 : r->spin_max_ns / 8;
        if (r->spin_ns > r->spin_max_ns)
            r->spin_ns = r->spin_max_ns;
    }
    return ret;
}

/* Submit everything queued and collect completions.  With wait set, block
 * until at least one completion arrives or timeout_ns passes (a negative
 * timeout waits without limit); without it, only flush completions that are
 * ready, which with DEFER_TASKRUN also runs the deferred task work.
 * Returns >= 0 or -errno (-ETIME on timeout, -EINTR on a signal). */
int ur_enter(struct ur_ring *r, int wait, long long timeout_ns)
{
    int ret;

    if (!r->enabled && (ret = ur_ring_enable(r)) < 0)
        return ret;
    r->enters++;
    if (!wait)
        ret = io_uring_submit_and_get_events(&r->ring);
    else if (r->spin_max_ns > 0)
        ret = ur_spin_then_wait(r, timeout_ns);
    else
        ret = ur_wait(r, timeout_ns);
    return ur_submit_rest(r, ret);
}

static inline void ur_release(struct ur_ring *r, uint64_t ud);

/* Copy up to max completions into out and mark them seen. */
int ur_reap(struct ur_ring *r, struct ur_cqe *out, int max)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    int n = 0, seen = 0;

    io_uring_for_each_cqe(&r->ring, head, cqe) {
        if (n == max)
            break;
        seen++;
        if (cqe->user_data == LIBURING_UDATA_TIMEOUT)
            continue;
        out[n].user_data = cqe->user_data;
        out[n].res = cqe->res;
        out[n].flags = cqe->flags;
        if (UR_KIND(cqe->user_data) != UR_KIND_INTERNAL &&
            !(cqe->flags & IORING_CQE_F_MORE))
            ur_release(r, cqe->user_data);
        n++;
    }
    if (seen)
        io_uring_cq_advance(&r->ring, seen);
    r->cqes += n;
    return n;
}

static struct io_uring_sqe *ur_sqe(struct ur_ring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (sqe)
        return sqe;
    /* The submission queue is full: hand what is queued to the kernel now
     * and continue; completions stay in the CQ (or its overflow list) until
     * the event loop reaps them. */
    r->sq_full++;
    if (ur_submit(r) < 0)
        return NULL;
    return io_uring_get_sqe(&r->ring);
}

static int ur_grow_slots(struct ur_ring *r)
{
    uint32_t n = r->nslots ? r->nslots * 2 : 1024, i;
    uint64_t *slots;
    uint32_t *free_slots;

    if (n > (1u << UR_SLOT_BITS))
        return -EBUSY;
    slots = realloc(r->slots, n * sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    r->slots = slots;
    free_slots = realloc(r->free_slots, n * sizeof(*free_slots));
    if (!free_slots)
        return -ENOMEM;
    r->free_slots = free_slots;
    /* Lowest slot on top of the stack. */
    for (i = n; i > r->nslots; i--) {
        slots[i - 1] = 0;
        free_slots[r->nfree++] = i - 1;
    }
    r->nslots = n;
    return 0;
}

/* A new operation of the given kind: a slot in the table, a fresh tag and
 * a free SQE.  Returns the tag (> 0) or -errno; the caller prepares the SQE
 * and ends with ur_tag(). */
static int64_t ur_begin(struct ur_ring *r, unsigned kind,
                        struct io_uring_sqe **sqe)
{
    uint64_t ud;
    uint32_t slot;

    if (!r->nfree) {
        int ret = ur_grow_slots(r);
        if (ret < 0)
            return ret;
    }
    *sqe = ur_sqe(r);
    if (!*sqe)
        return -EBUSY;
    slot = r->free_slots[--r->nfree];
    r->serial = (r->serial + 1) & 0x7fffffff;
    ud = ((uint64_t)r->serial << 32) | ((uint64_t)slot << 8) | (kind & 0xff);
    r->slots[slot] = ud;
    r->inflight++;
    return (int64_t)ud;
}

static inline int64_t ur_tag(struct ur_ring *r, struct io_uring_sqe *sqe,
                             int64_t ud)
{
    io_uring_sqe_set_data64(sqe, (uint64_t)ud);
    r->sqes++;
    return ud;
}

/* The operation tagged ud has had its last completion. */
static inline void ur_release(struct ur_ring *r, uint64_t ud)
{
    uint32_t slot = UR_SLOT(ud);

    if (slot < r->nslots && r->slots[slot] == ud) {
        r->slots[slot] = 0;
        r->free_slots[r->nfree++] = slot;
        r->inflight--;
    }
}

#define UR_BEGIN(r, kind, sqe, ud) \
    do { ud = ur_begin(r, kind, &sqe); if (ud < 0) return ud; } while (0)

/* Reap what has completed during a drain: release the slots of finished
 * operations and close the sockets that late accepts still produced. */
static void ur_drain_reap(struct ur_ring *r)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    int seen = 0;

    io_uring_for_each_cqe(&r->ring, head, cqe) {
        seen++;
        if (cqe->user_data == LIBURING_UDATA_TIMEOUT ||
            UR_KIND(cqe->user_data) == UR_KIND_INTERNAL)
            continue;
        if (UR_KIND(cqe->user_data) == UR_KIND_ACCEPT && cqe->res >= 0)
            close(cqe->res);
        if (!(cqe->flags & IORING_CQE_F_MORE))
            ur_release(r, cqe->user_data);
    }
    if (seen)
        io_uring_cq_advance(&r->ring, seen);
}

/* Cancel every operation still owned by the kernel and wait for their
 * completions, so that no buffer is freed while the kernel can still use it.
 * Each is cancelled by its own tag, which every kernel supports.  Used when
 * a ring is released without its event loop having drained it.  Returns the
 * number of operations still outstanding (0 on success). */
int ur_drain(struct ur_ring *r, int timeout_ms)
{
    struct io_uring_sqe *sqe;
    uint32_t slot;
    int rounds = 0;

    if (r->inflight <= 0)
        return 0;
    for (slot = 0; slot < r->nslots; slot++) {
        if (!r->slots[slot])
            continue;
        while (!(sqe = io_uring_get_sqe(&r->ring))) {
            /* The SQ is full: submit, and make room in the CQ. */
            ur_enter(r, 0, 0);
            ur_drain_reap(r);
            if (++rounds > timeout_ms)
                return (int)r->inflight;
        }
        io_uring_prep_cancel64(sqe, r->slots[slot], 0);
        io_uring_sqe_set_data64(sqe, 0);
    }
    rounds = 0;
    while (r->inflight > 0 && rounds < timeout_ms) {
        ur_enter(r, 1, 1000000);
        ur_drain_reap(r);
        rounds++;
    }
    return (int)r->inflight;
}

int64_t ur_prep_poll(struct ur_ring *r, int fd, unsigned mask, int multishot,
                     unsigned kind)
{
    struct io_uring_sqe *sqe;
    int64_t ud;
    UR_BEGIN(r, kind, sqe, ud);
    if (multishot)
        io_uring_prep_poll_multishot(sqe, fd, mask);
    else
        io_uring_prep_poll_add(sqe, fd, mask);
    return ur_tag(r, sqe, ud);
}

/* Cancel the operation tagged target.  The cancellation itself is tagged
 * UR_KIND_INTERNAL and not tracked. */
int ur_prep_cancel(struct ur_ring *r, uint64_t target)
{
    struct io_uring_sqe *sqe = ur_sqe(r);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, 0);
    r->sqes++;
    return 0;
}

int64_t ur_prep_accept(struct ur_ring *r, int fd, void *addr, void *addrlen,
                       int flags, int multishot, unsigned kind)
{
    struct io_uring_sqe *sqe;
    int64_t ud;
    UR_BEGIN(r, kind, sqe, ud);
    if (multishot)
        io_uring_prep_multishot_accept(sqe, fd, (struct sockaddr *)addr,
                                       (socklen_t *)addrlen, flags);
    else
        io_uring_prep_accept(sqe, fd, (struct sockaddr *)addr,
                             (socklen_t *)addrlen, flags);
    return ur_tag(r, sqe, ud);
}

int64_t ur_prep_recv(struct ur_ring *r, int fd, void *buf, size_t len,
                     int flags, unsigned kind)
{
    struct io_uring_sqe *sqe;
    int64_t ud;
    UR_BEGIN(r, kind, sqe, ud);
    io_uring_prep_recv(sqe, fd, buf, len, flags);
    return ur_tag(r, sqe, ud);
}

int64_t ur_prep_recv_multishot(struct ur_ring *r, int fd, int bgid, int flags,
                               unsigned kind)
{
    struct io_uring_sqe *sqe;
    int64_t ud;
    UR_BEGIN(r, kind, sqe, ud);
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, flags);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = bgid;
    return ur_tag(r, sqe, ud);
}

/* buf is char * so that Python can pass a bytes object as it is: cffi then
 * hands over a pointer to the object's own storage, no copy (checked by the
 * tests through ur_address_of).  The caller keeps the object alive until the
 * completion. */
int64_t ur_prep_send(struct ur_ring *r, int fd, const char *buf, size_t len,
                     int flags, unsigned kind)
{
    struct io_uring_sqe *sqe;
    int64_t ud;
    UR_BEGIN(r, kind, sqe, ud);
    io_uring_prep_send(sqe, fd, buf, len, flags);
    return ur_tag(r, sqe, ud);
}

/* sendmsg of a plain iovec: msghdr is caller-owned memory of
 * ur_msghdr_size() bytes that must live until the completion. */
int64_t ur_prep_sendv(struct ur_ring *r, int fd, struct iovec *iov,
                      int iovcnt, void *msghdr, int flags, unsigned kind)
{
    struct io_uring_sqe *sqe;
    struct msghdr *msg = (struct msghdr *)msghdr;
    int64_t ud;
    UR_BEGIN(r, kind, sqe, ud);
    memset(msg, 0, sizeof(*msg));
    msg->msg_iov = iov;
    msg->msg_iovlen = iovcnt;
    io_uring_prep_sendmsg(sqe, fd, msg, flags);
    return ur_tag(r, sqe, ud);
}

uintptr_t ur_address_of(const char *p)
{
    return (uintptr_t)p;
}

size_t ur_msghdr_size(void)
{
    return sizeof(struct msghdr);
}

/* The memory of one message operation (recvmsg or sendmsg): its header,
 * one iovec, room for an address and for control data.  Python allocates it
 * (ffi.new) and keeps it alive until the operation's last completion.
 *
 * The control area holds one SCM_RIGHTS message carrying the most
 * descriptors Linux passes in one message (SCM_MAX_FD, 253) plus
 * credentials: a UNIX stream receive stops after the message that carries
 * descriptors, so one receive never sees more. */
#define UR_CONTROL_SIZE (CMSG_SPACE(sizeof(int) * 253) + \
                         CMSG_SPACE(sizeof(struct ucred)))
#define UR_NAME_SIZE (sizeof(struct sockaddr_storage))
#define UR_RECVMSG_OUT_SIZE (sizeof(struct io_uring_recvmsg_out))

struct ur_msg {
    struct msghdr hdr;
    struct iovec iov;
    struct sockaddr_storage name;
    union {
        struct cmsghdr align;
        unsigned char buf[UR_CONTROL_SIZE];
    } control;
};

/* Multishot recvmsg into the provided buffers of group bgid.  Each buffer
 * then starts with a struct io_uring_recvmsg_out, followed by namelen bytes
 * for the source address, controllen bytes for control data, and the
 * payload (see io_uring_prep_recvmsg_multishot(3)). */
int64_t ur_prep_recvmsg_multishot(struct ur_ring *r, int fd, struct ur_msg *m,
                                  unsigned namelen, unsigned controllen,
                                  int bgid, unsigned kind)
{
    struct io_uring_sqe *sqe;
    int64_t ud;
    UR_BEGIN(r, kind, sqe, ud);
    memset(&m->hdr, 0, sizeof(m->hdr));
    m->hdr.msg_namelen = namelen;
    m->hdr.msg_controllen = controllen;
    io_uring_prep_recvmsg_multishot(sqe, fd, &m->hdr, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = bgid;
    return ur_tag(r, sqe, ud);
}

/* Single-shot recvmsg of up to len bytes into buf, or into a provided
 * buffer of group bgid if bgid is not negative; the address and control
 * data go into m. */
int64_t ur_prep_recvmsg_into(struct ur_ring *r, int fd, struct ur_msg *m,
                             char *buf, size_t len, unsigned namelen,
                             unsigned controllen, int bgid, unsigned kind)
{
    struct io_uring_sqe *sqe;
    int64_t ud;
    UR_BEGIN(r, kind, sqe, ud);
    memset(&m->hdr, 0, sizeof(m->hdr));
    m->iov.iov_base = buf;
    m->iov.iov_len = len;
    m->hdr.msg_iov = &m->iov;
    m->hdr.msg_iovlen = 1;
    if (namelen) {
        m->hdr.msg_name = &m->name;
        m->hdr.msg_namelen = namelen < sizeof(m->name) ? namelen
                                                        : sizeof(m->name);
    }
    if (controllen) {
        m->hdr.msg_control = m->control.buf;
        m->hdr.msg_controllen = controllen < UR_CONTROL_SIZE ? controllen
                                                             : UR_CONTROL_SIZE;
    }
    io_uring_prep_recvmsg(sqe, fd, &m->hdr, 0);
    if (bgid >= 0) {
        m->iov.iov_base = NULL;
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = bgid;
    }
    return ur_tag(r, sqe, ud);
}

/* sendmsg of len bytes at buf to the address name (a struct sockaddr of
 * namelen bytes, copied into m; none if namelen is 0), passing descriptor
 * passfd with SCM_RIGHTS unless it is negative.  link chains the next SQE
 * after this one (IOSQE_IO_LINK) so that datagrams leave in order. */
int64_t ur_prep_sendmsg_to(struct ur_ring *r, int fd, struct ur_msg *m,
                           const char *buf, size_t len, const char *name,
                           unsigned namelen, int passfd, int flags, int link,
                           unsigned kind)
{
    struct io_uring_sqe *sqe;
    struct cmsghdr *cmsg;
    int64_t ud;
    if (namelen > sizeof(m->name))
        return -EINVAL;
    UR_BEGIN(r, kind, sqe, ud);
    memset(&m->hdr, 0, sizeof(m->hdr));
    m->iov.iov_base = (void *)buf;
    m->iov.iov_len = len;
    m->hdr.msg_iov = &m->iov;
    m->hdr.msg_iovlen = 1;
    if (namelen) {
        memcpy(&m->name, name, namelen);
        m->hdr.msg_name = &m->name;
        m->hdr.msg_namelen = namelen;
    }
    if (passfd >= 0) {
        memset(m->control.buf, 0, CMSG_SPACE(sizeof(int)));
        m->hdr.msg_control = m->control.buf;
        m->hdr.msg_controllen = CMSG_SPACE(sizeof(int));
        cmsg = CMSG_FIRSTHDR(&m->hdr);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &passfd, sizeof(int));
    }
    io_uring_prep_sendmsg(sqe, fd, &m->hdr, flags);
    if (link)
        sqe->flags |= IOSQE_IO_LINK;
    return ur_tag(r, sqe, ud);
}

/* What a single-shot recvmsg reported: the lengths of the address and of
 * the control data, and the message flags (MSG_TRUNC, MSG_CTRUNC). */
unsigned ur_msg_namelen(struct ur_msg *m)
{
    return m->hdr.msg_namelen;
}

size_t ur_msg_controllen(struct ur_msg *m)
{
    return m->hdr.msg_controllen;
}

int ur_msg_flags(struct ur_msg *m)
{
    return m->hdr.msg_flags;
}

unsigned char *ur_msg_name(struct ur_msg *m)
{
    return (unsigned char *)&m->name;
}

unsigned char *ur_msg_control(struct ur_msg *m)
{
    return m->control.buf;
}

/* glibc serves blocks below its mmap threshold (128 KiB at first) from the
 * heap and gives the top of the heap back to the kernel once more than its
 * trim threshold (twice the former) is free there.  Receives copied out of
 * 64 KiB provided buffers make exactly that pattern: a few megabytes of
 * 64 KiB bytes objects alive at once, then freed together, so the heap top
 * is returned and every new object page-faults its memory back in.  glibc
 * raises both thresholds by itself when a block it had mapped is freed
 * (mallopt(3), "dynamic mmap threshold"); freeing one such block of `size`
 * bytes moves them to where this workload needs them, without disabling
 * that adjustment as mallopt would.  Elsewhere this is one malloc and free. */
void ur_raise_malloc_thresholds(size_t size)
{
    /* volatile: compilers may drop a malloc whose block is never used */
    void *volatile p = malloc(size);
    free(p);
}

/* A provided-buffer ring set up by hand: liburing 2.3 lacks
 * io_uring_setup_buf_ring, which does exactly this (page-aligned ring memory,
 * init, register).  The ring starts empty: uringreactor._buffers puts
 * buffers in circulation as they are needed.  It also maps an area of nbufs
 * buffers of bufsize bytes, where every buffer starts; the kernel touches
 * only the pages it writes, so buffers that never circulate, and the parts
 * of buffers short reads never reach, cost no memory. */
int ur_bufring_setup(struct ur_ring *r, struct ur_bufring *b, unsigned nbufs,
                     unsigned bufsize, int bgid)
{
    struct io_uring_buf_reg reg;
    void *mem;
    int ret;

    memset(b, 0, sizeof(*b));
    if (nbufs == 0 || (nbufs & (nbufs - 1)) || nbufs > 32768)
        return -EINVAL;
    b->ring_bytes = nbufs * sizeof(struct io_uring_buf);
    /* Shared, not private: the kernel pins these pages when the ring is
     * registered, and a fork (twistd daemonizing after the reactor is
     * built) would give the child private copies of pinned pages, so the
     * buffers it gives back would never reach the kernel. */
    mem = mmap(NULL, b->ring_bytes, PROT_READ | PROT_WRITE,
               MAP_ANONYMOUS | MAP_SHARED, -1, 0);
    if (mem == MAP_FAILED)
        return -errno;
    b->br = (struct io_uring_buf_ring *)mem;
    b->base = mmap(NULL, (size_t)nbufs * bufsize, PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (b->base == MAP_FAILED) {
        ret = -errno;
        munmap(mem, b->ring_bytes);
        b->br = NULL;
        b->base = NULL;
        return ret;
    }
    io_uring_buf_ring_init(b->br);
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)(uintptr_t)mem;
    reg.ring_entries = nbufs;
    reg.bgid = bgid;
    ret = io_uring_register_buf_ring(&r->ring, &reg, 0);
    if (ret) {
        munmap(b->base, (size_t)nbufs * bufsize);
        munmap(mem, b->ring_bytes);
        b->br = NULL;
        b->base = NULL;
        return ret < 0 ? ret : -ret;
    }
    b->nbufs = nbufs;
    b->bufsize = bufsize;
    b->bgid = bgid;
    return 0;
}

void ur_bufring_free(struct ur_ring *r, struct ur_bufring *b)
{
    if (!b->br)
        return;
    if (r)
        io_uring_unregister_buf_ring(&r->ring, b->bgid);
    munmap(b->base, (size_t)b->nbufs * b->bufsize);
    munmap(b->br, b->ring_bytes);
    b->br = NULL;
    b->base = NULL;
}
"""

def _liburingVersion() -> str | None:
    """
    The version of the liburing being built against, from pkg-config.
    """
    import subprocess

    try:
        out = subprocess.run(
            ["pkg-config", "--modversion", "liburing"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


_version = _liburingVersion()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "uringreactor._liburing",
    SOURCE,
    sources=["uringreactor/c/probe.c"],
    include_dirs=["uringreactor/c"],
    libraries=["uring"],
    define_macros=[("UR_LIBURING_PKGVERSION", f'"{_version}"')] if _version else [],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
