/*
 * A provided-buffer ring: its entries, mapped shared, registered with an
 * io_uring under a buffer group id, and an area of `count` buffers of
 * `size` bytes each that the entries point into (unless the owner points
 * an entry elsewhere: see _buffers.c).  liburing 2.3 lacks
 * io_uring_setup_buf_ring, which does the same.
 *
 * Plain C, no Python: the CPython extension (_buffers.c) builds its
 * hand-over buffers on it, and the cffi module exposes it as it is to PyPy,
 * where reads are copied out of the area with ffi.unpack.
 */
#ifndef UR_BUFRING_H
#define UR_BUFRING_H

#include <stddef.h>
#include <liburing.h>

struct ur_bufring {
    struct io_uring_buf_ring *br;
    char *area;             /* buffer bid starts at area + bid * size */
    int ring_fd;            /* the io_uring registered with, or -1 */
    int group;              /* the buffer group id */
    unsigned count;         /* buffer ids 0 .. count-1 may exist */
    unsigned circulating;   /* ids 0 .. circulating-1 are the kernel's */
    unsigned mask;
    size_t size;            /* bytes in each buffer */
};

/* Map a ring of `count` entries (a power of two, at most 32768) and its
 * area, and register it with ring_fd (none if ring_fd is -1).  0, or
 * -errno with nothing left mapped or registered. */
int ur_bufring_init(struct ur_bufring *b, int ring_fd, int group,
                    unsigned count, size_t size);

/* Put up to `more` area buffers in circulation, never more than `count`;
 * return how many circulate now.  (Through addresses: see
 * ur_bufring_put.) */
unsigned ur_bufring_grow(struct ur_bufring *b, unsigned more);

/* Give buffer bid back to the kernel, its memory at addr (NULL: its place
 * in the area). */
void ur_bufring_give_back(struct ur_bufring *b, unsigned bid, char *addr);

/* Where buffer bid lies in the area. */
char *ur_bufring_area_of(struct ur_bufring *b, unsigned bid);

/* The ring's entries (for tests that play the kernel). */
void *ur_bufring_entries(struct ur_bufring *b);

/* Unregister from the io_uring: the kernel takes no buffer any more.
 * 0 or -errno. */
int ur_bufring_unregister(struct ur_bufring *b);

/* Unmap the entries and the area: only once the kernel can no longer
 * write into them (after ur_bufring_unregister, or the io_uring's close). */
void ur_bufring_unmap(struct ur_bufring *b);

/* For cffi, which cannot embed the struct: a ring on the heap, or NULL
 * with *err set to the errno; and its release (unmapping). */
struct ur_bufring *ur_bufring_new(int ring_fd, int group, unsigned count,
                                  size_t size, int *err);
void ur_bufring_free(struct ur_bufring *b);

#endif
