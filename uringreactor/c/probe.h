#ifndef UR_PROBE_H
#define UR_PROBE_H

#include <liburing.h>

/* What ur_probe_kernel() found: for each optional feature, 0 if it works,
 * otherwise the negative errno the kernel answered when it was tried. */
struct ur_probe {
    unsigned ring_features;  /* IORING_FEAT_* of a plain ring */
    int submit_all;          /* IORING_SETUP_SUBMIT_ALL */
    int coop_taskrun;        /* COOP_TASKRUN | TASKRUN_FLAG */
    int defer_taskrun;       /* SINGLE_ISSUER | DEFER_TASKRUN | R_DISABLED */
    int defer_taskrun_flag;  /* ... with TASKRUN_FLAG */
    int ring_fd;             /* io_uring_register_ring_fd */
    int buf_ring;            /* io_uring_register_buf_ring */
    int multishot_accept;    /* IORING_ACCEPT_MULTISHOT */
    int multishot_recv;      /* IORING_RECV_MULTISHOT on recv */
    int multishot_recvmsg;   /* IORING_RECV_MULTISHOT on recvmsg */
};

/* Try every feature on rings of its own; 0, or the negative errno with
 * which a plain ring could not be created (io_uring refused). */
int ur_probe_kernel(struct ur_probe *out);

#endif
