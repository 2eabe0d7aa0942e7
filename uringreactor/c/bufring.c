#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "bufring.h"

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
