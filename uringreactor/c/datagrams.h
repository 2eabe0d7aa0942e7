/*
 * Datagrams sent in batches with one sendmmsg(2).
 */
#ifndef UR_DATAGRAMS_H
#define UR_DATAGRAMS_H

#include <stdint.h>

/* The most datagrams one call takes (the kernel's UIO_MAXIOV for
 * sendmmsg). */
#define UR_DATAGRAM_BATCH 1024

int ur_send_datagrams(int fd, const char *data, const uint32_t *lengths,
                      const char *names, const uint32_t *namelengths,
                      unsigned count, int *error);

#endif
