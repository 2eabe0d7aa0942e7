"""
Types of the cffi binding built by build_ffi.py (the C in
C{uringreactor/c/}), for mypy.  C pointers and structures are cffi
C{CData}, typed C{Any}.
"""

from typing import Any

ffi: Any

class _Lib:
    IORING_SETUP_R_DISABLED: int
    IORING_SETUP_SUBMIT_ALL: int
    IORING_SETUP_COOP_TASKRUN: int
    IORING_SETUP_TASKRUN_FLAG: int
    IORING_SETUP_SINGLE_ISSUER: int
    IORING_SETUP_DEFER_TASKRUN: int
    IORING_FEAT_NODROP: int
    IORING_CQE_F_BUFFER: int
    IORING_CQE_F_MORE: int
    IORING_CQE_BUFFER_SHIFT: int
    UR_DATAGRAM_BATCH: int
    IORING_OP_ASYNC_CANCEL: int
    MSG_NOSIGNAL: int
    UR_KIND_POLL: int
    UR_KIND_ACCEPT: int
    UR_KIND_RECV: int
    UR_KIND_SEND: int
    UR_CONTROL_SIZE: int
    UR_NAME_SIZE: int
    UR_RECVMSG_OUT_SIZE: int
    def ur_address_of(self, p: Any) -> int: ...
    def ur_drain(self, r: Any, timeout_ms: int) -> int: ...
    def ur_enter(self, r: Any, wait: int, timeout_ns: int) -> int: ...
    def ur_liburing_version(self) -> Any: ...
    def ur_liburing_linkage(self) -> Any: ...
    def ur_msg_control(self, m: Any) -> Any: ...
    def ur_msg_controllen(self, m: Any) -> int: ...
    def ur_msg_name(self, m: Any) -> Any: ...
    def ur_msg_namelen(self, m: Any) -> int: ...
    def ur_msghdr_size(self) -> int: ...
    def ur_prep_accept(
        self,
        r: Any,
        fd: int,
        addr: Any,
        addrlen: Any,
        flags: int,
        multishot: int,
        kind: int,
    ) -> int: ...
    def ur_prep_cancel(self, r: Any, slot: int) -> int: ...
    def ur_prep_poll(
        self, r: Any, fd: int, mask: int, multishot: int, kind: int
    ) -> int: ...
    def ur_prep_recv(
        self, r: Any, fd: int, buf: Any, len: int, flags: int, kind: int
    ) -> int: ...
    def ur_prep_recv_multishot(
        self, r: Any, fd: int, bgid: int, flags: int, kind: int
    ) -> int: ...
    def ur_prep_recvmsg_into(
        self,
        r: Any,
        fd: int,
        m: Any,
        buf: Any,
        len: int,
        namelen: int,
        controllen: int,
        bgid: int,
        kind: int,
    ) -> int: ...
    def ur_prep_recvmsg_multishot(
        self,
        r: Any,
        fd: int,
        m: Any,
        namelen: int,
        controllen: int,
        bgid: int,
        kind: int,
    ) -> int: ...
    def ur_prep_read(
        self, r: Any, fd: int, buf: Any, len: int, bgid: int, kind: int
    ) -> int: ...
    def ur_prep_send(
        self, r: Any, fd: int, buf: Any, len: int, flags: int, kind: int
    ) -> int: ...
    def ur_send_datagrams(
        self,
        fd: int,
        data: bytes,
        lengths: Any,
        names: Any,
        namelengths: Any,
        count: int,
        error: Any,
    ) -> int: ...
    def ur_prep_sendmsg_to(
        self,
        r: Any,
        fd: int,
        m: Any,
        buf: Any,
        len: int,
        name: Any,
        namelen: int,
        passfd: int,
        flags: int,
        link: int,
        kind: int,
    ) -> int: ...
    def ur_prep_sendv(
        self, r: Any, fd: int, iov: Any, iovcnt: int, msghdr: Any, flags: int, kind: int
    ) -> int: ...
    def ur_probe_kernel(self, out: Any) -> int: ...
    def ur_probe_opcode(self, r: Any, opcode: int) -> int: ...
    def ur_raise_malloc_thresholds(self, size: int) -> None: ...
    # Provided-buffer rings (c/bufring.c), for PyPy: uringreactor.cffibuffers.
    def ur_bufring_new(
        self, ring_fd: int, group: int, count: int, size: int, err: Any
    ) -> Any: ...
    def ur_bufring_free(self, b: Any) -> None: ...
    def ur_bufring_grow(self, b: Any, more: int) -> int: ...
    def ur_bufring_give_back(self, b: Any, bid: int, addr: Any) -> None: ...
    def ur_bufring_unregister(self, b: Any) -> int: ...
    def ur_bufring_entries(self, b: Any) -> Any: ...
    def ur_reap(self, r: Any, out: Any, max: int) -> int: ...
    def ur_register_ring_fd(self, r: Any) -> int: ...
    def ur_ring_enable(self, r: Any) -> int: ...
    def ur_ring_exit(self, r: Any) -> None: ...
    def ur_ring_fd(self, r: Any) -> int: ...
    def ur_ring_init(
        self, r: Any, entries: int, cq_entries: int, flags: int
    ) -> int: ...
    def ur_sq_ready(self, r: Any) -> int: ...
    def ur_submit(self, r: Any) -> int: ...

lib: _Lib
