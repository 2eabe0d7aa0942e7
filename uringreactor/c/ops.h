/*
 * The operations Python prepares: each takes a free SQE, fills it in and
 * tags it (ur_begin), and returns the operation's slot, or a negative
 * errno.
 */
#ifndef UR_OPS_H
#define UR_OPS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "ring.h"

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

int64_t ur_prep_poll(struct ur_ring *r, int fd, unsigned mask, int multishot,
                     unsigned kind);
/* Cancel the operation in slot: 1 if it was withdrawn from the SQ before
 * the kernel saw it (no completion will come), 0 if its final completion
 * is still to be delivered (a cancel was queued, or the kernel has
 * finished it and the completion is in the batch being delivered), or
 * -errno (-ENOENT: no such slot). */
int ur_prep_cancel(struct ur_ring *r, uint32_t slot);
int64_t ur_prep_accept(struct ur_ring *r, int fd, void *addr, void *addrlen,
                       int flags, int multishot, unsigned kind);
int64_t ur_prep_recv(struct ur_ring *r, int fd, void *buf, size_t len,
                     int flags, unsigned kind);
int64_t ur_prep_recv_multishot(struct ur_ring *r, int fd, int bgid, int flags,
                               unsigned kind);
int64_t ur_prep_send(struct ur_ring *r, int fd, const char *buf, size_t len,
                     int flags, unsigned kind);
int64_t ur_prep_sendv(struct ur_ring *r, int fd, struct iovec *iov,
                      int iovcnt, void *msghdr, int flags, unsigned kind);
int64_t ur_prep_read(struct ur_ring *r, int fd, void *buf, unsigned len,
                     int bgid, unsigned kind);
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
unsigned char *ur_msg_name(struct ur_msg *m);
unsigned char *ur_msg_control(struct ur_msg *m);
uintptr_t ur_address_of(const char *p);
size_t ur_msghdr_size(void);
void ur_raise_malloc_thresholds(size_t size);

#endif
