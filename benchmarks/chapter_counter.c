/* The chapter's uninstrumented Counter, unchanged but for the module name
 * and Py_UNUSED on unused parameters: the baseline the benchmark compares
 * pyatexit with (a T_INT member for count, PyArg_ParseTupleAndKeywords in
 * tp_init). */
#include <Python.h>
#include "structmember.h"

typedef struct {
    PyObject_HEAD int number;
} Py_Counter;

static void
Py_Counter_dealloc(Py_Counter *self)
{
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Py_Counter_new(PyTypeObject *type,
               PyObject *Py_UNUSED(args),
               PyObject *Py_UNUSED(kwds))
{
    Py_Counter *self;
    self = (Py_Counter *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->number = 0;
    }
    return (PyObject *)self;
}

static int
Py_Counter_init(Py_Counter *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"number", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i", kwlist, &self->number)) {
        return -1;
    }
    return 0;
}

static PyMemberDef Py_Counter_members[] = {
    {"count", T_INT, offsetof(Py_Counter, number), 0, "count value"},
    {NULL, 0, 0, 0, NULL}};

static PyObject *
Py_Counter_inc(Py_Counter *self, PyObject *Py_UNUSED(unused))
{
    self->number++;
    Py_RETURN_NONE;
}

static PyObject *
Py_Counter_dec(Py_Counter *self, PyObject *Py_UNUSED(unused))
{
    self->number--;
    Py_RETURN_NONE;
}

static PyMethodDef Py_Counter_methods[] = {
    {"inc", (PyCFunction)Py_Counter_inc, METH_NOARGS, "Increments the counter"},
    {"dec", (PyCFunction)Py_Counter_dec, METH_NOARGS, "Decrements the counter"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject Py_CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "chapter_counter.Counter",
    .tp_basicsize = sizeof(Py_Counter),
    .tp_dealloc = (destructor)Py_Counter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Py_Counter objects",
    .tp_methods = Py_Counter_methods,
    .tp_members = Py_Counter_members,
    .tp_init = (initproc)Py_Counter_init,
    .tp_new = Py_Counter_new,
};

static PyModuleDef chapter_module = {
    PyModuleDef_HEAD_INIT, "chapter_counter", NULL, -1, NULL, NULL, NULL, NULL,
    NULL};

PyMODINIT_FUNC
PyInit_chapter_counter(void)
{
    PyObject *m;
    if (PyType_Ready(&Py_CounterType) < 0) {
        return NULL;
    }
    m = PyModule_Create(&chapter_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&Py_CounterType);
    PyModule_AddObject(m, "Counter", (PyObject *)&Py_CounterType);
    return m;
}
