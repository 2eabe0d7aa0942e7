/*
 * Preparing operations: one C call per operation, which takes an SQE, fills
 * it in and tags it; and the memory of message operations.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

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

/* Cancel the operation in slot, by its tag.  The cancellation itself is
 * tagged UR_KIND_INTERNAL and not tracked. */
int ur_prep_cancel(struct ur_ring *r, uint32_t slot)
{
    struct io_uring_sqe *sqe;
    uint64_t target;

    if (!slot || slot >= r->nslots)
        return -ENOENT;
    /* Finished: its last completion was copied out in the batch being
     * delivered, and reaches the canceller's record from there. */
    if (!(target = r->slots[slot]))
        return 0;
    /* Not yet handed to the kernel: nothing to cancel there. */
    if (ur_withdraw(r, slot))
        return 1;
    sqe = ur_sqe(r);
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

/* A read of up to len bytes from fd at its current position (a pipe, a
 * terminal): into buf, which must live until the completion; or, with bgid
 * >= 0 (buf NULL), into a buffer of that provided group, which the kernel
 * takes only when data arrives. */
int64_t ur_prep_read(struct ur_ring *r, int fd, void *buf, unsigned len,
                     int bgid, unsigned kind)
{
    struct io_uring_sqe *sqe;
    int64_t ud;
    UR_BEGIN(r, kind, sqe, ud);
    io_uring_prep_read(sqe, fd, buf, len, (uint64_t)-1);
    if (bgid >= 0) {
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = bgid;
    }
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
 * the control data. */
unsigned ur_msg_namelen(struct ur_msg *m)
{
    return m->hdr.msg_namelen;
}

size_t ur_msg_controllen(struct ur_msg *m)
{
    return m->hdr.msg_controllen;
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
