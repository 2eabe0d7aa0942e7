/* Provided-buffer rings: see bufring.h. */
#include "bufring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static size_t entries_bytes(unsigned count)
{
    return (size_t)count * sizeof(struct io_uring_buf);
}

static int register_call(int fd, unsigned opcode, void *arg)
{
    return (int)syscall(__NR_io_uring_register, fd, opcode, arg, 1);
}

char *ur_bufring_area_of(struct ur_bufring *b, unsigned bid)
{
    return b->area + (size_t)bid * b->size;
}

void ur_bufring_unmap(struct ur_bufring *b)
{
    if (b->br != NULL)
        munmap(b->br, entries_bytes(b->count));
    if (b->area != NULL)
        munmap(b->area, (size_t)b->count * b->size);
    b->br = NULL;
    b->area = NULL;
}

int ur_bufring_init(struct ur_bufring *b, int ring_fd, int group,
                    unsigned count, size_t size)
{
    struct io_uring_buf_reg reg;
    void *mem;
    int err;

    memset(b, 0, sizeof(*b));
    b->ring_fd = -1;
    if (count == 0 || (count & (count - 1)) || count > 32768 || size == 0 ||
        size > 0xffffffffu || group < 0 || group > 0xffff)
        return -EINVAL;
    b->group = group;
    b->count = count;
    b->mask = io_uring_buf_ring_mask(count);
    b->size = size;
    /* The entries are shared, not private: the kernel pins these pages
     * when the ring is registered, and a fork (twistd daemonizing after
     * the reactor is built) would give the child private copies of pinned
     * pages, so the buffers it gives back would never reach the kernel. */
    mem = mmap(NULL, entries_bytes(count), PROT_READ | PROT_WRITE,
               MAP_ANONYMOUS | MAP_SHARED, -1, 0);
    if (mem == MAP_FAILED)
        goto fail;
    b->br = (struct io_uring_buf_ring *)mem;
    /* The kernel touches only the pages it writes: buffers that never
     * circulate, and the parts short reads never reach, cost no memory. */
    mem = mmap(NULL, (size_t)count * size, PROT_READ | PROT_WRITE,
               MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED)
        goto fail;
    b->area = (char *)mem;
    io_uring_buf_ring_init(b->br);
    if (ring_fd >= 0) {
        memset(&reg, 0, sizeof(reg));
        reg.ring_addr = (unsigned long)(uintptr_t)b->br;
        reg.ring_entries = count;
        reg.bgid = (unsigned short)group;
        if (register_call(ring_fd, IORING_REGISTER_PBUF_RING, &reg) < 0)
            goto fail;
        b->ring_fd = ring_fd;
    }
    return 0;

fail:
    err = errno;
    ur_bufring_unmap(b);
    return -err;
}

unsigned ur_bufring_grow(struct ur_bufring *b, unsigned more)
{
    unsigned i, n = b->count - b->circulating;

    if (more < n)
        n = more;
    for (i = 0; i < n; i++)
        io_uring_buf_ring_add(b->br, ur_bufring_area_of(b, b->circulating + i),
                              (unsigned)b->size,
                              (unsigned short)(b->circulating + i), b->mask,
                              (int)i);
    io_uring_buf_ring_advance(b->br, (int)n);
    b->circulating += n;
    return b->circulating;
}

void ur_bufring_give_back(struct ur_bufring *b, unsigned bid, char *addr)
{
    io_uring_buf_ring_add(b->br, addr ? addr : ur_bufring_area_of(b, bid),
                          (unsigned)b->size, (unsigned short)bid, b->mask, 0);
    io_uring_buf_ring_advance(b->br, 1);
}

void *ur_bufring_entries(struct ur_bufring *b)
{
    return b->br;
}

int ur_bufring_unregister(struct ur_bufring *b)
{
    struct io_uring_buf_reg reg;
    int fd = b->ring_fd;

    if (fd < 0)
        return 0;
    b->ring_fd = -1;
    memset(&reg, 0, sizeof(reg));
    reg.bgid = (unsigned short)b->group;
    if (register_call(fd, IORING_UNREGISTER_PBUF_RING, &reg) < 0)
        return -errno;
    return 0;
}

struct ur_bufring *ur_bufring_new(int ring_fd, int group, unsigned count,
                                  size_t size, int *err)
{
    struct ur_bufring *b = malloc(sizeof(*b));
    int rc;

    if (b == NULL) {
        *err = ENOMEM;
        return NULL;
    }
    rc = ur_bufring_init(b, ring_fd, group, count, size);
    if (rc < 0) {
        free(b);
        *err = -rc;
        return NULL;
    }
    *err = 0;
    return b;
}

void ur_bufring_free(struct ur_bufring *b)
{
    ur_bufring_unmap(b);
    free(b);
}
