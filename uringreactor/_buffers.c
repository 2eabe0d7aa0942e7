/*
 * uringreactor._buffers: the buffers of the provided-buffer ring, and the
 * bytes objects that long reads become without a copy.
 *
 * A Buffers object owns a provided-buffer ring whole (c/bufring.c maps,
 * registers, fills and unmaps it).  Every buffer starts in the ring's area;
 * a read out of the area is copied into a new bytes object, and the buffer
 * goes straight back.
 *
 * A buffer that receives a long read (at least `handover` bytes) is then
 * replaced by a bytes object of the same size: the ring's entry points to
 * that object's storage from then on.  When the next long read fills it,
 * take() hands the object itself to the caller (shrunk to the length read:
 * the kernel's copy into it was the only copy) and puts a fresh one in its
 * place.  So bulk transfers are not copied, and workloads of short reads
 * keep the area's memory behaviour: an idle connection, or a burst of
 * small messages, allocates nothing.
 *
 * This is the one piece of the binding that needs the CPython C API (cffi
 * cannot make or return Python objects), and it is built for CPython only:
 * PyPy's emulation of that API costs more per call than a copy, so there
 * the cffi module's bufring functions serve (uringreactor.cffibuffers) and
 * every read is copied out.  The io_uring itself and every operation stay
 * in the cffi module, which hands over only the ring's descriptor.
 *
 * Lifetime: the kernel may write into any buffer in circulation until the
 * ring is unregistered or the io_uring closed, so the objects and the area
 * stay until release(), which the owner calls only after that; a Buffers
 * object collected while still registered leaks its memory rather than
 * free it under the kernel.  An object leaves
 * `slots` only after the completion that filled it, when the kernel no
 * longer holds it, and never while something else references it (a view
 * from view()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>

#include "c/bufring.h"

#ifdef PYPY_VERSION
#error "_buffers is for CPython: PyPy uses uringreactor.cffibuffers"
#endif

typedef struct {
    PyObject_HEAD
    struct ur_bufring ring;
    PyObject **slots;         /* buffer bid's bytes object, or NULL: area */
    Py_ssize_t size;          /* bytes in each buffer */
    Py_ssize_t handover;      /* reads at least this long are not copied */
} Buffers;

static inline char *memory_of(Buffers *self, unsigned bid)
{
    PyObject *slot = self->slots[bid];
    if (slot != NULL)
        return PyBytes_AS_STRING(slot);
    return ur_bufring_area_of(&self->ring, bid);
}

/* Give buffer bid back to the kernel, as it now is. */
static inline void give_back(Buffers *self, unsigned bid)
{
    ur_bufring_give_back(&self->ring, bid, memory_of(self, bid));
}

static int check_released(Buffers *self)
{
    if (self->slots != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "the buffers have been released");
    return -1;
}

static int check_id(Buffers *self, Py_ssize_t bid)
{
    if (check_released(self) < 0)
        return -1;
    if (bid < 0 || bid >= self->ring.circulating) {
        PyErr_Format(PyExc_IndexError, "no buffer %zd in circulation", bid);
        return -1;
    }
    return 0;
}

static int parse_ints(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                      Py_ssize_t *out, const char *name)
{
    Py_ssize_t i;
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)",
                     name, want, nargs);
        return -1;
    }
    for (i = 0; i < want; i++) {
        out[i] = PyLong_AsSsize_t(args[i]);
        if (out[i] == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static PyObject *Buffers_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *names[] = {"ring_fd", "group", "count", "size", "handover",
                            NULL};
    int ring_fd, group;
    unsigned count;
    Py_ssize_t size, handover;
    Buffers *self;
    int rc;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiInn", names, &ring_fd,
                                     &group, &count, &size, &handover))
        return NULL;
    if (count == 0 || (count & (count - 1)) || count > 32768) {
        PyErr_SetString(PyExc_ValueError,
                        "a buffer ring needs a power of two of at most 32768 "
                        "entries");
        return NULL;
    }
    if (size <= 0 || size > UINT_MAX) {
        PyErr_SetString(PyExc_ValueError, "bad buffer size");
        return NULL;
    }
    if (group < 0 || group > 0xffff) {
        PyErr_SetString(PyExc_ValueError, "bad buffer group id");
        return NULL;
    }
    self = (Buffers *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->ring.ring_fd = -1;
    self->size = size;
    self->handover = handover < 1 ? 1 : handover;
    self->slots = PyMem_Calloc(count, sizeof(PyObject *));
    if (self->slots == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    rc = ur_bufring_init(&self->ring, ring_fd, group, count, (size_t)size);
    if (rc < 0) {
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* Drop the objects and unmap the memory: only once the kernel can no
 * longer write into them. */
static void release(Buffers *self)
{
    unsigned i;
    if (self->slots == NULL)
        return;
    for (i = 0; i < self->ring.count; i++)
        Py_CLEAR(self->slots[i]);
    PyMem_Free(self->slots);
    self->slots = NULL;
    ur_bufring_unmap(&self->ring);
}

static void Buffers_dealloc(Buffers *self)
{
    if (self->ring.ring_fd < 0)
        release(self);
    /* Else still registered: the kernel may write into the memory, which
     * is leaked rather than freed under it (the owner unregisters first,
     * so this happens only if it failed to). */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(grow_doc,
"grow(more) -> int\n\n"
"Put up to `more` new buffers in circulation (never more than the ring\n"
"holds); return how many circulate now.");

static PyObject *Buffers_grow(Buffers *self, PyObject *arg)
{
    Py_ssize_t more = PyLong_AsSsize_t(arg);

    if ((more == -1 && PyErr_Occurred()) || check_released(self) < 0)
        return NULL;
    /* Buffers new to circulation have no bytes object: they are in the
     * area, where ur_bufring_grow points them. */
    if (more < 0)
        more = 0;
    if (more > (Py_ssize_t)self->ring.count)
        more = self->ring.count;
    return PyLong_FromUnsignedLong(ur_bufring_grow(&self->ring, (unsigned)more));
}

PyDoc_STRVAR(take_doc,
"take(bid, length) -> bytes\n\n"
"The first `length` bytes of buffer `bid`, which a completion has just\n"
"filled; the buffer (or a fresh one in its place) goes back to the kernel.");

static PyObject *Buffers_take(Buffers *self, PyObject *const *args,
                              Py_ssize_t nargs)
{
    Py_ssize_t a[2], bid, length;
    PyObject *data, *fresh;

    if (parse_ints(args, nargs, 2, a, "take") < 0 || check_id(self, a[0]) < 0)
        return NULL;
    bid = a[0];
    length = a[1];
    if (length < 0 || length > self->size) {
        PyErr_Format(PyExc_ValueError, "bad length %zd", length);
        return NULL;
    }
    data = self->slots[bid];
    if (length >= self->handover && data != NULL && Py_REFCNT(data) == 1 &&
        (fresh = PyBytes_FromStringAndSize(NULL, self->size)) != NULL) {
        self->slots[bid] = fresh;
        give_back(self, (unsigned)bid);
        if (length < self->size && _PyBytes_Resize(&data, length) < 0)
            return NULL;
        return data;
    }
    PyErr_Clear();
    data = PyBytes_FromStringAndSize(memory_of(self, (unsigned)bid), length);
    if (data != NULL && length >= self->handover && self->slots[bid] == NULL) {
        /* A long read: the next one into this buffer is handed over.  If
         * there is no memory for that, the buffer stays in the area. */
        self->slots[bid] = PyBytes_FromStringAndSize(NULL, self->size);
        PyErr_Clear();
    }
    give_back(self, (unsigned)bid);
    return data;
}

PyDoc_STRVAR(view_doc,
"view(bid, length) -> memoryview\n\n"
"A read-only view of the first `length` bytes of buffer `bid`, for\n"
"parsing in place; give the buffer back with recycle() and drop the view\n"
"then, since the kernel will write into it again.");

static PyObject *Buffers_view(Buffers *self, PyObject *const *args,
                              Py_ssize_t nargs)
{
    Py_ssize_t a[2];
    PyObject *whole, *part;

    if (parse_ints(args, nargs, 2, a, "view") < 0 || check_id(self, a[0]) < 0)
        return NULL;
    if (a[1] < 0 || a[1] > self->size) {
        PyErr_Format(PyExc_ValueError, "bad length %zd", a[1]);
        return NULL;
    }
    if (self->slots[a[0]] == NULL)
        /* The area lives until the ring is released. */
        return PyMemoryView_FromMemory(memory_of(self, (unsigned)a[0]), a[1],
                                       PyBUF_READ);
    whole = PyMemoryView_FromObject(self->slots[a[0]]);
    if (whole == NULL)
        return NULL;
    part = PySequence_GetSlice(whole, 0, a[1]);
    Py_DECREF(whole);
    return part;
}

PyDoc_STRVAR(recycle_doc,
"recycle(bid)\n\n"
"Give buffer `bid` back to the kernel as it is.");

static PyObject *Buffers_recycle(Buffers *self, PyObject *arg)
{
    Py_ssize_t bid = PyLong_AsSsize_t(arg);
    if (bid == -1 && PyErr_Occurred())
        return NULL;
    if (check_id(self, bid) < 0)
        return NULL;
    give_back(self, (unsigned)bid);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(release_doc,
"release()\n\n"
"Free every buffer and the ring's memory.  Only once the kernel can no\n"
"longer write into them: after unregister() or the io_uring's close.");

static PyObject *Buffers_release(Buffers *self, PyObject *Py_UNUSED(unused))
{
    /* The caller vouches that the kernel is done (the ring unregistered or
     * the io_uring closed). */
    self->ring.ring_fd = -1;
    release(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(unregister_doc,
"unregister()\n\n"
"Unregister the ring from its io_uring: the kernel takes no buffer from\n"
"it any more.  Then release() may free them.");

static PyObject *Buffers_unregister(Buffers *self, PyObject *Py_UNUSED(unused))
{
    int rc = ur_bufring_unregister(&self->ring);
    if (rc < 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Buffers_circulating(Buffers *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->ring.circulating);
}

static PyObject *Buffers_ring_address(Buffers *self, void *Py_UNUSED(closure))
{
    return PyLong_FromVoidPtr(self->ring.br);
}

static PyObject *Buffers_area_address(Buffers *self, void *Py_UNUSED(closure))
{
    return PyLong_FromVoidPtr(self->ring.area);
}

static PyMethodDef Buffers_methods[] = {
    {"grow", (PyCFunction)Buffers_grow, METH_O, grow_doc},
    {"take", (PyCFunction)(void (*)(void))Buffers_take, METH_FASTCALL,
     take_doc},
    {"view", (PyCFunction)(void (*)(void))Buffers_view, METH_FASTCALL,
     view_doc},
    {"recycle", (PyCFunction)Buffers_recycle, METH_O, recycle_doc},
    {"unregister", (PyCFunction)Buffers_unregister, METH_NOARGS,
     unregister_doc},
    {"release", (PyCFunction)Buffers_release, METH_NOARGS, release_doc},
    {NULL}
};

static PyGetSetDef Buffers_getset[] = {
    {"circulating", (getter)Buffers_circulating, NULL,
     "How many buffers the kernel may fill.", NULL},
    {"ring_address", (getter)Buffers_ring_address, NULL,
     "Where the ring's entries are (for tests that play the kernel).", NULL},
    {"area_address", (getter)Buffers_area_address, NULL,
     "Where the area the buffers start in is.", NULL},
    {NULL}
};

PyDoc_STRVAR(Buffers_doc,
"Buffers(ring_fd, group, count, size, handover)\n\n"
"A provided-buffer ring of `count` entries registered with the io_uring\n"
"`ring_fd` as buffer group `group` (with a ring_fd of -1 it is mapped but\n"
"not registered, for tests that play the kernel's part), and its buffers,\n"
"`size` bytes each; none circulates until grow().  A buffer that received\n"
"a read of at least `handover` bytes becomes a bytes object, handed over\n"
"without a copy by the next such read.");

static PyTypeObject BuffersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringreactor._buffers.Buffers",
    .tp_basicsize = sizeof(Buffers),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Buffers_doc,
    .tp_new = Buffers_new,
    .tp_dealloc = (destructor)Buffers_dealloc,
    .tp_methods = Buffers_methods,
    .tp_getset = Buffers_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "uringreactor._buffers",
    .m_doc = "Provided buffers that become the bytes handed to protocols.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__buffers(void)
{
    PyObject *m;
    if (PyType_Ready(&BuffersType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&BuffersType);
    if (PyModule_AddObject(m, "Buffers", (PyObject *)&BuffersType) < 0) {
        Py_DECREF(&BuffersType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "HANDS_OVER", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
