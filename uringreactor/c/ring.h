/*
 * The ring: one io_uring, the table of the operations the kernel owns, and
 * the counters that describe its use.  See uringreactor/ring.py for the
 * model; this is what runs in C so that each operation costs one crossing
 * from Python and each batch of completions one more.
 */
#ifndef UR_RING_H
#define UR_RING_H

#include <stdint.h>
#include <liburing.h>

#define UR_KIND_INTERNAL 0
#define UR_KIND_POLL 1
#define UR_KIND_ACCEPT 2
#define UR_KIND_RECV 3
#define UR_KIND_SEND 4
#define UR_KIND(ud) ((unsigned)((ud) & 0xff))
/* user_data: bits 0-7 the kind, 8-31 the operation's slot in the ring's
 * table of operations in flight, 32-62 a serial number, so that a
 * completion that outlived its slot's operation (none should) is never
 * taken for its successor's.  Python knows an operation by its slot alone
 * (never 0), which indexes its own table; the C side keeps the tag. */
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
     * tag, on every kernel (IORING_ASYNC_CANCEL_ANY needs 5.19).  The
     * slots of operations finished in the batch ur_reap last copied out
     * are freed only at the next ur_reap: Python, which knows operations
     * by their slot, prepares new ones while it delivers that batch, and a
     * new operation must not take the slot of one whose completion is
     * still to be delivered. */
    uint64_t *slots;
    uint32_t *free_slots;
    uint32_t *reaped_slots;
    uint32_t nslots;
    uint32_t nfree;
    uint32_t nreaped;
    uint32_t serial;
};

/* One completion as Python reads it, copied out of the CQ in batches: the
 * slot of the operation it belongs to. */
struct ur_cqe {
    uint64_t slot;
    int32_t res;
    uint32_t flags;
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
int ur_withdraw(struct ur_ring *r, uint32_t slot);
int ur_drain(struct ur_ring *r, int timeout_ms);
const char *ur_liburing_version(void);
const char *ur_liburing_linkage(void);

/* For the operations (ops.c): a free SQE, submitting what is queued when
 * the SQ is full; and a new operation's slot, tag and SQE. */
struct io_uring_sqe *ur_sqe(struct ur_ring *r);
int64_t ur_begin(struct ur_ring *r, unsigned kind, struct io_uring_sqe **sqe);

/* Tag a prepared SQE; what the prep helpers return: the slot. */
static inline int64_t ur_tag(struct ur_ring *r, struct io_uring_sqe *sqe,
                             int64_t ud)
{
    io_uring_sqe_set_data64(sqe, (uint64_t)ud);
    r->sqes++;
    return UR_SLOT(ud);
}

#define UR_BEGIN(r, kind, sqe, ud) \
    do { ud = ur_begin(r, kind, &sqe); if (ud < 0) return ud; } while (0)

#endif
