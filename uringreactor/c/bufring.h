#ifndef UR_BUFRING_H
#define UR_BUFRING_H

#include "ring.h"

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

int ur_bufring_setup(struct ur_ring *r, struct ur_bufring *b, unsigned nbufs,
                     unsigned bufsize, int bgid);
void ur_bufring_free(struct ur_ring *r, struct ur_bufring *b);

#endif
