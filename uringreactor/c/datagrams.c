/*
 * Datagrams sent in batches with one sendmmsg(2), not as io_uring
 * operations.
 *
 * A UDP send never waits for the peer: it completes, or fails, when it is
 * made.  As io_uring operations, datagrams that must leave in the order
 * written have to be linked, and with DEFER_TASKRUN the kernel starts each
 * link only at the next io_uring_enter, so a burst of N datagrams costs N
 * loop iterations and a completion each.  One sendmmsg sends the whole
 * burst in order, in one system call, and keeps no memory after it
 * returns: nothing the kernel reads outlives this call.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "datagrams.h"

/* Send count datagrams on the non-blocking socket fd: datagram i is
 * lengths[i] bytes of data (the datagrams one after another), to the
 * address of namelengths[i] bytes in names (likewise), or to the connected
 * address when names is NULL.  Returns how many were sent, in order; when
 * that is fewer than count, *error is the errno that stopped datagram
 * number <return value> (EAGAIN when the socket's buffer is full). */
int ur_send_datagrams(int fd, const char *data, const uint32_t *lengths,
                      const char *names, const uint32_t *namelengths,
                      unsigned count, int *error)
{
    struct mmsghdr msgs[64];
    struct iovec iovs[64];
    unsigned done = 0;

    *error = 0;
    if (count > UR_DATAGRAM_BATCH)
        count = UR_DATAGRAM_BATCH;
    while (done < count) {
        unsigned n = count - done, i;
        int sent;
        if (n > 64)
            n = 64;
        memset(msgs, 0, sizeof(msgs[0]) * n);
        for (i = 0; i < n; i++) {
            iovs[i].iov_base = (void *)data;
            iovs[i].iov_len = lengths[done + i];
            data += lengths[done + i];
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            if (names != NULL) {
                msgs[i].msg_hdr.msg_name = (void *)names;
                msgs[i].msg_hdr.msg_namelen = namelengths[done + i];
                names += namelengths[done + i];
            }
        }
        sent = sendmmsg(fd, msgs, n, 0);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            *error = errno;
            return (int)done;
        }
        /* A short count: the next datagram failed; sending it alone
         * reports why (or sends it, if the cause has passed). */
        done += (unsigned)sent;
        if ((unsigned)sent < n) {
            /* Rewind data and names to datagram number done. */
            unsigned j;
            for (j = done; j < done + (n - (unsigned)sent); j++) {
                data -= lengths[j];
                if (names != NULL)
                    names -= namelengths[j];
            }
        }
    }
    return (int)done;
}
