"""
cffi build script for C{uringreactor._liburing}, the binding to liburing.

The C lives in C{uringreactor/c/}: C{ring.c} (the ring, submission, waiting,
reaping, the table of operations in flight), C{ops.c} (preparing
operations), C{probe.c} (what the running kernel can do).  The provided-buffer ring
belongs to the other extension, C{uringreactor._buffers}, which maps,
registers and frees it given the ring's descriptor.  What Python may call is
declared once, below.

The binding is deliberately small.  Python never touches a submission or
completion queue entry directly: every operation is prepared by one C call
that takes a free SQE, fills it in, tags it and returns the operation's
slot, and completions are copied out in batches into a flat array of
C{(slot, res, flags)} records.  Each crossing from Python into C costs
tens of nanoseconds, so the helpers are shaped to need one crossing per
operation and one per batch of completions.

Helpers newer than liburing 2.3 (Debian 12) are written out in those files
rather than required from the library.

liburing is linked statically where its archive is installed (Debian's and
Ubuntu's liburing-dev ship liburing.a), so a built wheel needs no liburing
on the machine it is installed on; otherwise the binding loads
liburing.so.2.  Without liburing's development files the build stops with
the package to install on each distribution.

C{user_data} layout (C{ring.h}): the low 8 bits hold the operation kind
(C{UR_KIND_*}), the next 24 its slot in the table of operations in flight,
the rest a serial number.  Python sees only the slot (it indexes Python's
own table, a list); the kind lets the C side finish what Python can no
longer do when a ring is torn down (close sockets that a cancelled accept
still produced); the table lets it cancel every operation by its tag.
"""

import os
import subprocess
import sysconfig

from cffi import FFI

CDEF = r"""
#define IORING_SETUP_R_DISABLED ...
#define IORING_SETUP_SUBMIT_ALL ...
#define IORING_SETUP_COOP_TASKRUN ...
#define IORING_SETUP_TASKRUN_FLAG ...
#define IORING_SETUP_SINGLE_ISSUER ...
#define IORING_SETUP_DEFER_TASKRUN ...

#define IORING_FEAT_NODROP ...

#define IORING_CQE_F_BUFFER ...
#define IORING_CQE_F_MORE ...
#define IORING_CQE_BUFFER_SHIFT ...

#define IORING_OP_ASYNC_CANCEL ...

/* PyPy's socket module lacks it. */
#define MSG_NOSIGNAL ...

#define UR_KIND_POLL ...
#define UR_KIND_ACCEPT ...
#define UR_KIND_RECV ...
#define UR_KIND_SEND ...

struct iovec {
    void *iov_base;
    size_t iov_len;
};

struct ur_ring {
    unsigned setup_flags;
    unsigned features;
    unsigned sq_entries;
    unsigned cq_entries;
    int enabled;
    long long inflight;
    unsigned long long enters;
    unsigned long long sqes;
    unsigned long long cqes;
    unsigned long long sq_full;
    long long spin_max_ns;
    long long spin_ns;
    unsigned long long spins;
    unsigned long long spin_hits;
    ...;
};

struct ur_cqe {
    uint64_t slot;
    int32_t res;
    uint32_t flags;
};

struct io_uring_buf_ring { ...; };

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
int ur_drain(struct ur_ring *r, int timeout_ms);

int64_t ur_prep_poll(struct ur_ring *r, int fd, unsigned mask, int multishot,
                     unsigned kind);
int ur_prep_cancel(struct ur_ring *r, uint32_t slot);
int64_t ur_prep_accept(struct ur_ring *r, int fd, void *addr, void *addrlen,
                       int flags, int multishot, unsigned kind);
int64_t ur_prep_recv(struct ur_ring *r, int fd, void *buf, size_t len,
                     int flags, unsigned kind);
int64_t ur_prep_recv_multishot(struct ur_ring *r, int fd, int bgid, int flags,
                               unsigned kind);
int64_t ur_prep_send(struct ur_ring *r, int fd, const char *buf, size_t len,
                     int flags, unsigned kind);
uintptr_t ur_address_of(const char *p);
int64_t ur_prep_sendv(struct ur_ring *r, int fd, struct iovec *iov,
                      int iovcnt, void *msghdr, int flags, unsigned kind);
size_t ur_msghdr_size(void);

#define UR_CONTROL_SIZE ...
#define UR_NAME_SIZE ...
#define UR_RECVMSG_OUT_SIZE ...
struct ur_msg { ...; };
int64_t ur_prep_recvmsg_multishot(struct ur_ring *r, int fd, struct ur_msg *m,
                                  unsigned namelen, unsigned controllen,
                                  int bgid, unsigned kind);
int64_t ur_prep_read(struct ur_ring *r, int fd, void *buf, unsigned len,
                     int bgid, unsigned kind);
int64_t ur_prep_recvmsg_into(struct ur_ring *r, int fd, struct ur_msg *m,
                             char *buf, size_t len, unsigned namelen,
                             unsigned controllen, int bgid, unsigned kind);
int64_t ur_prep_sendmsg_to(struct ur_ring *r, int fd, struct ur_msg *m,
                           const char *buf, size_t len, const char *name,
                           unsigned namelen, int passfd, int flags, int link,
                           unsigned kind);
int ur_send_datagrams(int fd, const char *data, const uint32_t *lengths,
                      const char *names, const uint32_t *namelengths,
                      unsigned count, int *error);
#define UR_DATAGRAM_BATCH ...
unsigned ur_msg_namelen(struct ur_msg *m);
size_t ur_msg_controllen(struct ur_msg *m);
unsigned char *ur_msg_name(struct ur_msg *m);
unsigned char *ur_msg_control(struct ur_msg *m);

void ur_raise_malloc_thresholds(size_t size);

struct ur_bufring {
    char *area;
    unsigned count;
    unsigned circulating;
    size_t size;
    ...;
};
struct ur_bufring *ur_bufring_new(int ring_fd, int group, unsigned count,
                                  size_t size, int *err);
void ur_bufring_free(struct ur_bufring *b);
unsigned ur_bufring_grow(struct ur_bufring *b, unsigned more);
void ur_bufring_give_back(struct ur_bufring *b, unsigned bid, char *addr);
int ur_bufring_unregister(struct ur_bufring *b);
void *ur_bufring_entries(struct ur_bufring *b);


struct ur_probe {
    unsigned ring_features;
    int submit_all;
    int coop_taskrun;
    int defer_taskrun;
    int defer_taskrun_flag;
    int ring_fd;
    int buf_ring;
    int multishot_accept;
    int multishot_recv;
    int multishot_recvmsg;
};
int ur_probe_kernel(struct ur_probe *out);
const char *ur_liburing_version(void);
const char *ur_liburing_linkage(void);
"""

SOURCES = [
    "uringreactor/c/ring.c",
    "uringreactor/c/ops.c",
    "uringreactor/c/probe.c",
    "uringreactor/c/bufring.c",
    "uringreactor/c/datagrams.c",
]


_MISSING_LIBURING = """\
uringreactor needs liburing's development files (liburing.h, liburing.a or
liburing.so) to build, and none were found{detail}.  Install them:

    Debian, Ubuntu:      apt-get install liburing-dev      (2.3 or newer)
    Fedora, RHEL, Alma:  dnf install liburing-devel
    Alpine:              apk add liburing-dev
    Arch:                pacman -S liburing

or install a uringreactor wheel, which carries liburing and needs nothing
at run time."""


def _pkgConfig(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["pkg-config", *args, "liburing"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _libraryDirectories() -> list[str]:
    found = _pkgConfig("--variable=libdir")
    dirs = [found] if found else []
    multiarch = sysconfig.get_config_var("MULTIARCH")
    for base in ("/usr/local/lib", "/usr/lib64", "/usr/lib"):
        if multiarch:
            dirs.append(os.path.join(base, multiarch))
        dirs.append(base)
    return dirs


def _includeDirectories() -> list[str]:
    found = _pkgConfig("--variable=includedir")
    return ([found] if found else []) + ["/usr/local/include", "/usr/include"]


def _linkage() -> tuple[str, dict[str, list[str]]]:
    """
    How to link liburing: statically when its archive is there (the wheel
    then needs no liburing where it is installed), else as a shared
    library.  C{URINGREACTOR_LIBURING_LINKAGE=static} or C{shared} forces
    one.

    @raise SystemExit: with the packages to install, if liburing's
        development files are absent.
    """
    wanted = os.environ.get("URINGREACTOR_LIBURING_LINKAGE", "auto")
    if wanted not in ("auto", "static", "shared"):
        raise SystemExit(
            f"URINGREACTOR_LIBURING_LINKAGE={wanted!r}: use static, shared or auto"
        )
    if not any(
        os.path.exists(os.path.join(d, "liburing.h")) for d in _includeDirectories()
    ):
        raise SystemExit(_MISSING_LIBURING.format(detail=" (no liburing.h)"))
    dirs = _libraryDirectories()
    archive = next(
        (
            os.path.join(d, "liburing.a")
            for d in dirs
            if os.path.exists(os.path.join(d, "liburing.a"))
        ),
        None,
    )
    shared = any(os.path.exists(os.path.join(d, "liburing.so")) for d in dirs)
    if wanted != "shared" and archive is not None:
        return "static", {"extra_objects": [archive]}
    if wanted == "static":
        raise SystemExit(
            _MISSING_LIBURING.format(detail=" (no liburing.a, and static was asked)")
        )
    if not shared:
        raise SystemExit(_MISSING_LIBURING.format(detail=" (no liburing.so)"))
    return "shared", {"libraries": ["uring"]}


_version = _pkgConfig("--modversion")
_linked, _linkArguments = _linkage()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "uringreactor._liburing",
    '#include "ring.h"\n#include "ops.h"\n#include "probe.h"\n#include "bufring.h"\n'
    '#include "datagrams.h"\n',
    sources=SOURCES,
    include_dirs=["uringreactor/c"],
    # struct ucred (the control area's size) is a GNU extension.
    define_macros=[("_GNU_SOURCE", None), ("UR_LIBURING_LINKAGE", f'"{_linked}"')]
    + ([("UR_LIBURING_PKGVERSION", f'"{_version}"')] if _version else []),
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
    **_linkArguments,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
