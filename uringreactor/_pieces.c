/*
 * uringreactor._pieces: the check a transport's writeSequence makes of the
 * pieces it is given, in one pass in C.
 *
 * ITransport.writeSequence accepts bytes only (as FileDescriptor's does,
 * which raises TypeError for anything else, bytearray and memoryview
 * included), and the transport counts what it buffers.  twisted.web writes
 * every response's status line and headers as one writeSequence of a few
 * dozen pieces; checking their types and summing their lengths with map()
 * costs about 3 us a response on CPython, this about 0.1 us.
 *
 * Built for CPython only, like uringreactor._buffers; elsewhere the
 * transport does the same in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyDoc_STRVAR(byte_length_doc,
"byte_length(pieces, /)\n--\n\n"
"The total length of `pieces`, a list or tuple whose every item is a bytes\n"
"object (or an instance of a subclass of bytes); -1 if any item is not, or\n"
"if `pieces` is neither a list nor a tuple.");

static PyObject *byte_length(PyObject *Py_UNUSED(module), PyObject *pieces)
{
    PyObject **items;
    Py_ssize_t count, i, total = 0;

    if (!PyList_Check(pieces) && !PyTuple_Check(pieces))
        return PyLong_FromLong(-1);
    /* Nothing below runs Python code, so the list cannot change under the
     * loop. */
    count = PySequence_Fast_GET_SIZE(pieces);
    items = PySequence_Fast_ITEMS(pieces);
    for (i = 0; i < count; i++) {
        if (!PyBytes_Check(items[i]))
            return PyLong_FromLong(-1);
        total += PyBytes_GET_SIZE(items[i]);
    }
    return PyLong_FromSsize_t(total);
}

static PyMethodDef methods[] = {
    {"byte_length", byte_length, METH_O, byte_length_doc},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "uringreactor._pieces",
    .m_doc = "The check writeSequence makes of its pieces, in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__pieces(void)
{
    return PyModule_Create(&module);
}
