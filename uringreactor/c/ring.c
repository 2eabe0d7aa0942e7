/*
 * The ring: set-up, submission, waiting (with the spin before blocking),
 * reaping completions in batches, the table of operations in flight, and
 * draining a ring that is released without its event loop.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"

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

/* How liburing is linked into this module: "static" (a wheel that needs no
 * liburing where it is installed) or "shared" (liburing.so.2 at run time). */
const char *ur_liburing_linkage(void)
{
#if defined(UR_LIBURING_LINKAGE)
    return UR_LIBURING_LINKAGE;
#else
    return "shared";
#endif
}

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
    free(r->reaped_slots);
    r->slots = NULL;
    r->free_slots = NULL;
    r->reaped_slots = NULL;
    r->nslots = r->nfree = r->nreaped = 0;
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

/* Copy up to max completions into out and mark them seen.  The batch
 * copied out by the previous call has been delivered: its finished
 * operations' slots become free now (see struct ur_ring). */
int ur_reap(struct ur_ring *r, struct ur_cqe *out, int max)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    int n = 0, seen = 0;

    while (r->nreaped)
        r->free_slots[r->nfree++] = r->reaped_slots[--r->nreaped];

    io_uring_for_each_cqe(&r->ring, head, cqe) {
        if (n == max)
            break;
        seen++;
        uint64_t ud = cqe->user_data;
        uint32_t slot = UR_SLOT(ud);

        /* Internal operations (cancels, withdrawn SQEs) have no owner in
         * Python, and a completion whose slot no longer holds its tag has
         * none either. */
        if (ud == LIBURING_UDATA_TIMEOUT || UR_KIND(ud) == UR_KIND_INTERNAL ||
            slot >= r->nslots || r->slots[slot] != ud)
            continue;
        out[n].slot = slot;
        out[n].res = cqe->res;
        out[n].flags = cqe->flags;
        if (!(cqe->flags & IORING_CQE_F_MORE)) {
            /* Its last: the kernel is done with it. */
            r->slots[slot] = 0;
            r->reaped_slots[r->nreaped++] = slot;
            r->inflight--;
        }
        n++;
    }
    if (seen)
        io_uring_cq_advance(&r->ring, seen);
    r->cqes += n;
    return n;
}
struct io_uring_sqe *ur_sqe(struct ur_ring *r)
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
    uint32_t *free_slots, *reaped_slots;

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
    reaped_slots = realloc(r->reaped_slots, n * sizeof(*reaped_slots));
    if (!reaped_slots)
        return -ENOMEM;
    r->reaped_slots = reaped_slots;
    /* Lowest slot on top of the stack; slot 0 is never used, so that a
     * slot is always a positive number, as the tags it replaces were. */
    for (i = n; i > r->nslots; i--) {
        slots[i - 1] = 0;
        if (i > 1)
            free_slots[r->nfree++] = i - 1;
    }
    r->nslots = n;
    return 0;
}

/* A new operation of the given kind: a slot in the table, a fresh tag and
 * a free SQE.  Returns the tag (> 0) or -errno; the caller prepares the SQE
 * and ends with ur_tag(). */
int64_t ur_begin(struct ur_ring *r, unsigned kind,
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

/* Withdraw the operation in slot if its SQE is still in the SQ, not yet
 * handed to the kernel: the SQE becomes an internal no-op (keeping its
 * place in a link chain) and the slot is released, so no completion will
 * ever come for it.  Returns 1 if withdrawn, 0 if the kernel has it. */
int ur_withdraw(struct ur_ring *r, uint32_t slot)
{
    struct io_uring_sq *sq = &r->ring.sq;
    uint64_t ud = r->slots[slot];
    unsigned i;

    for (i = sq->sqe_head; i != sq->sqe_tail; i++) {
        struct io_uring_sqe *sqe = &sq->sqes[i & sq->ring_mask];
        if (sqe->user_data != ud)
            continue;
        unsigned char link = sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK);
        io_uring_prep_nop(sqe);
        sqe->flags |= link;
        io_uring_sqe_set_data64(sqe, 0);
        ur_release(r, ud);
        return 1;
    }
    return 0;
}

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
