/*
 * pyatexit: instrument a C extension for the whole life of a Python process
 * and report at exit.
 *
 * The module defines one type, equivalent to this Python class:
 *
 *     class Counter:
 *         def __init__(self, number=0): self.count = number
 *         def inc(self): self.count += 1
 *         def dec(self): self.count -= 1
 *
 * with `count` stored as a signed 64-bit integer (OverflowError at its ends).
 *
 * Built with COUNT_ALL_DEC_INC, every successful inc() and dec() on every
 * Counter in the process is counted, and the first Counter allocation
 * registers dump_inc_dec_count() with Py_AtExit().  CPython calls it after
 * finalisation, when no Python API may be used, so the report is formatted
 * with snprintf() and written with write(2), and only to the standard output
 * the process had when the report was registered.
 *
 * Counting is exact without a lock or an atomic read-modify-write on the
 * inc() path: each interpreter that imports the module claims a tally that
 * only the holder of that interpreter's GIL writes, and every Counter keeps a
 * pointer to its interpreter's tally.  The report adds up all the tallies.
 * On free-threaded builds, where threads share a tally without a GIL, the
 * tally uses atomic adds and each Counter is guarded by a critical section.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

_Static_assert(LLONG_MAX == INT64_MAX,
               "count is converted through long long, which must be 64 bits");

/* Critical sections are public API from 3.13; before that every build has a
 * GIL, and a section is just a block. */
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

#ifndef Py_TPFLAGS_IMMUTABLETYPE /* 3.9 */
#define Py_TPFLAGS_IMMUTABLETYPE 0
#endif

typedef struct {
    PyTypeObject *Counter_Type;
#ifdef COUNT_ALL_DEC_INC
    struct tally *tally; /* this interpreter's share of the counts */
#endif
} pyatexit_state;

static PyModuleDef pyatexit_module;

/* ---------------------------------------------------------------------- */
/* Process-wide instrumentation (COUNT_ALL_DEC_INC)                        */

#ifdef COUNT_ALL_DEC_INC

/* One per live module object, so one per interpreter that imported it.
 * Tallies are never freed: the exit report reads them after every module is
 * gone.  A tally released by a freed module is claimed again by the next, so
 * the list grows only to the number of modules alive at the same time. */
typedef struct tally {
    atomic_size_t inc;
    atomic_size_t dec;
    atomic_int in_use;
    struct tally *next; /* fixed before the tally is published */
} tally;

static _Atomic(tally *) tallies;

static tally *
tally_claim(void)
{
    tally *t = atomic_load_explicit(&tallies, memory_order_acquire);
    for (; t != NULL; t = t->next) {
        int unused = 0;
        if (atomic_compare_exchange_strong_explicit(&t->in_use,
                                                    &unused,
                                                    1,
                                                    memory_order_acquire,
                                                    memory_order_relaxed)) {
            return t;
        }
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    atomic_init(&t->inc, 0);
    atomic_init(&t->dec, 0);
    atomic_init(&t->in_use, 1);
    t->next = atomic_load_explicit(&tallies, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(
        &tallies, &t->next, t, memory_order_release, memory_order_relaxed)) {
    }
    return t;
}

static void
tally_release(tally *t)
{
    atomic_store_explicit(&t->in_use, 0, memory_order_release);
}

static inline void
tally_add(atomic_size_t *n)
{
#ifdef Py_GIL_DISABLED
    atomic_fetch_add_explicit(n, 1, memory_order_relaxed);
#else
    /* Only this interpreter's GIL holder writes the tally, so a relaxed load
     * and store (a plain add in machine code) is exact. */
    atomic_store_explicit(n,
                          atomic_load_explicit(n, memory_order_relaxed) + 1,
                          memory_order_relaxed);
#endif
}

static void
tally_totals(size_t *inc, size_t *dec)
{
    *inc = 0;
    *dec = 0;
    tally *t = atomic_load_explicit(&tallies, memory_order_acquire);
    for (; t != NULL; t = t->next) {
        *inc += atomic_load_explicit(&t->inc, memory_order_relaxed);
        *dec += atomic_load_explicit(&t->dec, memory_order_relaxed);
    }
}

/* Where the report may go: the file that a standard descriptor named when
 * the report was registered.  If the descriptor is later closed, or reused
 * for another file, the report is not written there. */
typedef struct {
    int open;
    dev_t dev;
    ino_t ino;
} fd_identity;

enum { REPORT_UNREGISTERED, REPORT_REGISTERING, REPORT_REGISTERED };
static atomic_int report_state;

static fd_identity stdout_identity;
static fd_identity stderr_identity;

static void
fd_identity_take(int fd, fd_identity *id)
{
    struct stat st;
    id->open = fstat(fd, &st) == 0;
    id->dev = id->open ? st.st_dev : 0;
    id->ino = id->open ? st.st_ino : 0;
}

static int
fd_identity_unchanged(int fd, const fd_identity *id)
{
    struct stat st;
    return id->open && fstat(fd, &st) == 0 && st.st_dev == id->dev &&
           st.st_ino == id->ino;
}

/* Returns 0 or an errno value.  A descriptor left non-blocking (by a parent
 * that shares it, say) whose pipe is full gets up to a second to drain. */
static int
write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                struct pollfd ready = {.fd = fd, .events = POLLOUT};
                if (poll(&ready, 1, 1000) > 0) {
                    continue;
                }
                return EAGAIN;
            }
            return errno;
        }
        if (n == 0) {
            return EIO;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes to a standard descriptor only if it still names the file it named
 * at registration, after what other C code left in stdio's buffer. */
static void
write_to_std(int fd, const fd_identity *id, const char *buf, size_t len)
{
    if (fd_identity_unchanged(fd, id)) {
        (void)fflush(fd == 1 ? stdout : stderr);
        (void)write_all(fd, buf, len);
    }
}

/* Appends the report with one write() to a file opened O_APPEND, so that
 * reports from processes sharing the file never interleave.  O_NONBLOCK keeps
 * a FIFO without a reader from hanging the exit (open fails with ENXIO).
 * Returns 0 or an errno value. */
static int
append_to_file(const char *path, const char *buf, size_t len)
{
    int fd;
    do {
        fd = open(path,
                  O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK,
                  0666);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        return errno;
    }
    int err = 0;
    ssize_t n;
    do {
        n = write(fd, buf, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        err = errno;
    }
    else if ((size_t)n != len) {
        err = ENOSPC;
    }
    if (close(fd) != 0 && err == 0 && errno != EINTR) {
        err = errno;
    }
    return err;
}

#define REPORT_FORMAT                  \
    "==== dump_inc_dec_count() ====\n" \
    "Increments: %zu\n"                \
    "Decrements: %zu\n"                \
    "== dump_inc_dec_count() END ==\n"

/* Registered with Py_AtExit(): runs after finalisation, so only C. */
static void
dump_inc_dec_count(void)
{
    /* Pairs with the release in report_register(): the identities are set. */
    if (atomic_load_explicit(&report_state, memory_order_acquire) !=
        REPORT_REGISTERED) {
        return;
    }
    char report[sizeof(REPORT_FORMAT) + 40]; /* two 20-digit numbers */
    size_t inc, dec;
    tally_totals(&inc, &dec);
    int len = snprintf(report, sizeof(report), REPORT_FORMAT, inc, dec);
    if (len < 0 || (size_t)len >= sizeof(report)) {
        return;
    }

    /* A reader that went away must not kill the process with SIGPIPE and
     * change its exit status: EPIPE is enough. */
    struct sigaction ignore, saved;
    memset(&ignore, 0, sizeof(ignore));
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    int restore = sigaction(SIGPIPE, &ignore, &saved) == 0;

    const char *path = getenv("PYATEXIT_DUMP_FILE");
    if (path == NULL || path[0] == '\0') {
        write_to_std(1, &stdout_identity, report, (size_t)len);
    }
    else {
        int err = append_to_file(path, report, (size_t)len);
        if (err != 0) {
            /* Not lost: to stderr, after one line that says why. */
            char why[PATH_MAX + sizeof(report) + 128];
            int n = snprintf(why,
                             sizeof(why),
                             "pyatexit: cannot append the report to "
                             "PYATEXIT_DUMP_FILE=%s: %s\n%s",
                             path,
                             strerror(err),
                             report);
            if (n > 0 && (size_t)n < sizeof(why)) {
                write_to_std(2, &stderr_identity, why, (size_t)n);
            }
            else {
                write_to_std(2, &stderr_identity, report, (size_t)len);
            }
        }
    }

    if (restore) {
        (void)sigaction(SIGPIPE, &saved, NULL);
    }
    /* CPython forgets its Py_AtExit() functions once it has called them.  An
     * application embedding Python that initialises it again registers the
     * report again with its next first Counter (the counts go on). */
    atomic_store_explicit(
        &report_state, REPORT_UNREGISTERED, memory_order_release);
}

/* Registers the report once per process, from whichever thread or
 * interpreter allocates the first Counter.  On failure a later allocation
 * tries again. */
static int
report_register(void)
{
    int expected = REPORT_UNREGISTERED;
    if (atomic_load_explicit(&report_state, memory_order_acquire) !=
            REPORT_UNREGISTERED ||
        !atomic_compare_exchange_strong_explicit(&report_state,
                                                 &expected,
                                                 REPORT_REGISTERING,
                                                 memory_order_acq_rel,
                                                 memory_order_acquire)) {
        return 0;
    }
    fd_identity_take(1, &stdout_identity);
    fd_identity_take(2, &stderr_identity);
    if (Py_AtExit(dump_inc_dec_count) != 0) {
        atomic_store_explicit(
            &report_state, REPORT_UNREGISTERED, memory_order_release);
        PyErr_SetString(PyExc_RuntimeError,
                        "pyatexit cannot register its exit report: "
                        "Py_AtExit() has no free slot (CPython allows 32 per "
                        "process, shared by all extensions)");
        return -1;
    }
    atomic_store_explicit(
        &report_state, REPORT_REGISTERED, memory_order_release);
    return 0;
}

/* What a Counter does for the instrumentation; nothing without it. */
#define TALLY_ATTACH(self, module) \
    ((self)->tally = ((pyatexit_state *)PyModule_GetState(module))->tally)
#define TALLY_INC(self) tally_add(&(self)->tally->inc)
#define TALLY_DEC(self) tally_add(&(self)->tally->dec)

#else /* !COUNT_ALL_DEC_INC */

#define report_register() 0
#define TALLY_ATTACH(self, module) ((void)(module))
#define TALLY_INC(self) ((void)0)
#define TALLY_DEC(self) ((void)0)

#endif /* COUNT_ALL_DEC_INC */

/* ---------------------------------------------------------------------- */
/* Counter objects                                                          */

typedef struct {
    PyObject_HEAD
    int64_t count;
#ifdef COUNT_ALL_DEC_INC
    struct tally *tally; /* the tally of the interpreter that made it */
#endif
} CounterObject;

#define CounterObject_CAST(op) ((CounterObject *)(op))

#if PY_VERSION_HEX >= 0x030B0000
#define type_module_by_def PyType_GetModuleByDef
#else
/* What PyType_GetModuleByDef() does from 3.11 on. */
static PyObject *
type_module_by_def(PyTypeObject *type, const PyModuleDef *def)
{
    PyObject *mro = type->tp_mro;
    for (Py_ssize_t i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (t->tp_flags & Py_TPFLAGS_HEAPTYPE) {
            PyObject *m = ((PyHeapTypeObject *)t)->ht_module;
            if (m != NULL && PyModule_GetDef(m) == def) {
                return m;
            }
        }
    }
    PyErr_Format(PyExc_TypeError, "%s is not a pyatexit type", type->tp_name);
    return NULL;
}
#endif

/* Converts an int (or an object with __index__) to int64_t. */
static int
int64_from_object(PyObject *obj, const char *what, int64_t *out)
{
    if (!PyLong_Check(obj) && !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be an integer, not %.200s",
                     what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (overflow) {
        PyErr_Format(PyExc_OverflowError,
                     "%s must be between -2**63 and 2**63-1",
                     what);
        return -1;
    }
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = value;
    return 0;
}

static PyObject *
Counter_new(PyTypeObject *type,
            PyObject *Py_UNUSED(args),
            PyObject *Py_UNUSED(kwds))
{
    PyObject *module = type_module_by_def(type, &pyatexit_module);
    if (module == NULL || report_register() < 0) {
        return NULL;
    }
    CounterObject *self = (CounterObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    TALLY_ATTACH(self, module);
    return (PyObject *)self;
}

static int
Counter_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"number", NULL};
    PyObject *number = NULL;
    int64_t value = 0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|O:Counter", kwlist, &number)) {
        return -1;
    }
    if (number != NULL &&
        int64_from_object(number, "Counter() argument 'number'", &value) < 0) {
        return -1;
    }
    Py_BEGIN_CRITICAL_SECTION(op);
    CounterObject_CAST(op)->count = value;
    Py_END_CRITICAL_SECTION();
    return 0;
}

/* Counter(number=0) without an argument tuple, for the exact type only
 * (tp_vectorcall is not inherited, so subclasses go through tp_new and
 * tp_init and keep any __new__ or __init__ they define). */
static PyObject *
Counter_vectorcall(PyObject *type,
                   PyObject *const *args,
                   size_t nargsf,
                   PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *number = nargs == 1 ? args[0] : NULL;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError,
                     "Counter() takes at most 1 argument (%zd given)",
                     nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "number") != 0) {
            PyErr_Format(PyExc_TypeError,
                         "Counter() got an unexpected keyword argument '%S'",
                         name);
            return NULL;
        }
        if (number != NULL) {
            PyErr_SetString(PyExc_TypeError,
                            "argument for Counter() given by name ('number') "
                            "and position (1)");
            return NULL;
        }
        number = args[nargs + i];
    }
    int64_t value = 0;
    if (number != NULL &&
        int64_from_object(number, "Counter() argument 'number'", &value) < 0) {
        return NULL;
    }
    if (report_register() < 0) {
        return NULL;
    }
    /* The exact type has no GC and no items: PyObject_New is all that
     * tp_alloc would do, less the zeroing and the generic checks. */
    CounterObject *self = PyObject_New(CounterObject, (PyTypeObject *)type);
    if (self == NULL) {
        return NULL;
    }
    self->count = value;
    TALLY_ATTACH(self, ((PyHeapTypeObject *)type)->ht_module);
    return (PyObject *)self;
}

static void
Counter_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
Counter_repr(PyObject *op)
{
    int64_t count;
    Py_BEGIN_CRITICAL_SECTION(op);
    count = CounterObject_CAST(op)->count;
    Py_END_CRITICAL_SECTION();
    return PyUnicode_FromFormat(
        "%s(%lld)", Py_TYPE(op)->tp_name, (long long)count);
}

PyDoc_STRVAR(Counter_inc__doc__,
             "inc($self, /)\n"
             "--\n"
             "\n"
             "Add one to count.\n"
             "\n"
             "Raises OverflowError, leaving count unchanged, when count is\n"
             "already 2**63-1.");

static PyObject *
Counter_inc(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CounterObject *self = CounterObject_CAST(op);
    int at_limit;
    Py_BEGIN_CRITICAL_SECTION(op);
    at_limit = self->count == INT64_MAX;
    if (!at_limit) {
        self->count++;
    }
    Py_END_CRITICAL_SECTION();
    if (at_limit) {
        PyErr_SetString(PyExc_OverflowError,
                        "Counter.inc(): count would exceed 2**63-1");
        return NULL;
    }
    TALLY_INC(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Counter_dec__doc__,
             "dec($self, /)\n"
             "--\n"
             "\n"
             "Subtract one from count.\n"
             "\n"
             "Raises OverflowError, leaving count unchanged, when count is\n"
             "already -2**63.");

static PyObject *
Counter_dec(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    CounterObject *self = CounterObject_CAST(op);
    int at_limit;
    Py_BEGIN_CRITICAL_SECTION(op);
    at_limit = self->count == INT64_MIN;
    if (!at_limit) {
        self->count--;
    }
    Py_END_CRITICAL_SECTION();
    if (at_limit) {
        PyErr_SetString(PyExc_OverflowError,
                        "Counter.dec(): count would go below -2**63");
        return NULL;
    }
    TALLY_DEC(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(
    Counter___reduce____doc__,
    "__reduce__($self, /)\n"
    "--\n"
    "\n"
    "Support pickle and copy: rebuild without calling __init__, then\n"
    "set count (and any instance attributes of a subclass).");

static PyObject *
Counter___reduce__(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    PyObject *copyreg = NULL, *newobj = NULL, *count = NULL, *dict = NULL;
    PyObject *result = NULL;
    int64_t value;
    Py_BEGIN_CRITICAL_SECTION(op);
    value = CounterObject_CAST(op)->count;
    Py_END_CRITICAL_SECTION();

    copyreg = PyImport_ImportModule("copyreg");
    if (copyreg == NULL) {
        goto done;
    }
    newobj = PyObject_GetAttrString(copyreg, "__newobj__");
    if (newobj == NULL) {
        goto done;
    }
    count = PyLong_FromLongLong(value);
    if (count == NULL) {
        goto done;
    }
    /* A subclass instance may have a __dict__; an empty one is left out. */
    dict = PyObject_GetAttrString(op, "__dict__");
    if (dict == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            goto done;
        }
        PyErr_Clear();
    }
    if (dict == NULL || (PyDict_Check(dict) && PyDict_GET_SIZE(dict) == 0)) {
        Py_XDECREF(dict);
        Py_INCREF(Py_None);
        dict = Py_None;
    }
    /* State (dict, {"count": n}): pickle and copy set the second part with
     * setattr(), so no __setstate__ is needed. */
    result = Py_BuildValue(
        "O(O)(O{sO})", newobj, (PyObject *)Py_TYPE(op), dict, "count", count);
done:
    Py_XDECREF(copyreg);
    Py_XDECREF(newobj);
    Py_XDECREF(count);
    Py_XDECREF(dict);
    return result;
}

static PyMethodDef Counter_methods[] = {
    {"inc", Counter_inc, METH_NOARGS, Counter_inc__doc__},
    {"dec", Counter_dec, METH_NOARGS, Counter_dec__doc__},
    {"__reduce__", Counter___reduce__, METH_NOARGS, Counter___reduce____doc__},
    {NULL, NULL, 0, NULL},
};

static PyObject *
Counter_get_count(PyObject *op, void *Py_UNUSED(closure))
{
    int64_t count;
    Py_BEGIN_CRITICAL_SECTION(op);
    count = CounterObject_CAST(op)->count;
    Py_END_CRITICAL_SECTION();
    return PyLong_FromLongLong(count);
}

static int
Counter_set_count(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    int64_t count;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError,
                        "cannot delete the count of a Counter");
        return -1;
    }
    if (int64_from_object(value, "count", &count) < 0) {
        return -1;
    }
    Py_BEGIN_CRITICAL_SECTION(op);
    CounterObject_CAST(op)->count = count;
    Py_END_CRITICAL_SECTION();
    return 0;
}

static PyGetSetDef Counter_getset[] = {
    {"count",
     Counter_get_count,
     Counter_set_count,
     "The counter's value, an int from -2**63 to 2**63-1.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Counter__doc__,
             "Counter(number=0)\n"
             "--\n"
             "\n"
             "An up/down counter: count starts at number, inc() adds one and\n"
             "dec() subtracts one.  count is a signed 64-bit integer.");

static PyType_Slot Counter_Type_slots[] = {
    {Py_tp_doc, (void *)Counter__doc__},
    {Py_tp_new, Counter_new},
    {Py_tp_init, Counter_init},
    {Py_tp_dealloc, Counter_dealloc},
    {Py_tp_repr, Counter_repr},
    {Py_tp_methods, Counter_methods},
    {Py_tp_getset, Counter_getset},
    {0, NULL},
};

static PyType_Spec Counter_Type_spec = {
    .name = "pyatexit.Counter",
    .basicsize = sizeof(CounterObject),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Counter_Type_slots,
};

/* ---------------------------------------------------------------------- */
/* Module functions                                                         */

PyDoc_STRVAR(
    pyatexit_inc_dec_counts__doc__,
    "inc_dec_counts($module, /)\n"
    "--\n"
    "\n"
    "Return (increments, decrements): the inc() and dec() calls made\n"
    "so far on all Counters of all interpreters in this process.\n"
    "\n"
    "Raises RuntimeError if pyatexit was built without\n"
    "COUNT_ALL_DEC_INC.");

static PyObject *
pyatexit_inc_dec_counts(PyObject *Py_UNUSED(module),
                        PyObject *Py_UNUSED(ignored))
{
#ifdef COUNT_ALL_DEC_INC
    size_t inc, dec;
    tally_totals(&inc, &dec);
    PyObject *counts = PyTuple_New(2);
    if (counts == NULL) {
        return NULL;
    }
    PyObject *n = PyLong_FromSize_t(inc);
    if (n == NULL) {
        Py_DECREF(counts);
        return NULL;
    }
    PyTuple_SET_ITEM(counts, 0, n);
    n = PyLong_FromSize_t(dec);
    if (n == NULL) {
        Py_DECREF(counts);
        return NULL;
    }
    PyTuple_SET_ITEM(counts, 1, n);
    return counts;
#else
    PyErr_SetString(PyExc_RuntimeError,
                    "pyatexit was built without COUNT_ALL_DEC_INC, so it does "
                    "not count inc() and dec() calls");
    return NULL;
#endif
}

static PyMethodDef pyatexit_methods[] = {
    {"inc_dec_counts",
     pyatexit_inc_dec_counts,
     METH_NOARGS,
     pyatexit_inc_dec_counts__doc__},
    {NULL, NULL, 0, NULL},
};

/* ---------------------------------------------------------------------- */
/* Module                                                                   */

static int
pyatexit_exec(PyObject *module)
{
    pyatexit_state *state = PyModule_GetState(module);
#ifdef COUNT_ALL_DEC_INC
    state->tally = tally_claim();
    if (state->tally == NULL) {
        return -1;
    }
    PyObject *built_with = Py_True;
#else
    PyObject *built_with = Py_False;
#endif
    state->Counter_Type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &Counter_Type_spec, NULL);
    if (state->Counter_Type == NULL) {
        return -1;
    }
#if PY_VERSION_HEX >= 0x030A0000
    /* Only where the type is immutable, so that the fast path can never
     * bypass a replaced __new__ or __init__. */
    state->Counter_Type->tp_vectorcall = Counter_vectorcall;
#else
    (void)Counter_vectorcall;
#endif
    if (PyModule_AddType(module, state->Counter_Type) < 0) {
        return -1;
    }
    Py_INCREF(built_with);
    if (PyModule_AddObject(module, "COUNT_ALL_DEC_INC", built_with) < 0) {
        Py_DECREF(built_with);
        return -1;
    }
    return 0;
}

static int
pyatexit_traverse(PyObject *module, visitproc visit, void *arg)
{
    pyatexit_state *state = PyModule_GetState(module);
    Py_VISIT(state->Counter_Type);
    return 0;
}

static int
pyatexit_clear(PyObject *module)
{
    pyatexit_state *state = PyModule_GetState(module);
    Py_CLEAR(state->Counter_Type);
    return 0;
}

static void
pyatexit_free(void *module)
{
    (void)pyatexit_clear((PyObject *)module);
#ifdef COUNT_ALL_DEC_INC
    pyatexit_state *state = PyModule_GetState((PyObject *)module);
    if (state->tally != NULL) {
        tally_release(state->tally);
        state->tally = NULL;
    }
#endif
}

static PyModuleDef_Slot pyatexit_slots[] = {
    {Py_mod_exec, pyatexit_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

PyDoc_STRVAR(
    pyatexit__doc__,
    "Instrument a C extension for the whole life of the process.\n"
    "\n"
    "Counter is an up/down counter.  When the module is built with\n"
    "COUNT_ALL_DEC_INC (see the attribute of that name), every inc()\n"
    "and dec() in the process is counted and a report is printed\n"
    "when the interpreter exits.  inc_dec_counts() returns the counts\n"
    "so far.");

static PyModuleDef pyatexit_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pyatexit",
    .m_doc = pyatexit__doc__,
    .m_size = sizeof(pyatexit_state),
    .m_methods = pyatexit_methods,
    .m_slots = pyatexit_slots,
    .m_traverse = pyatexit_traverse,
    .m_clear = pyatexit_clear,
    .m_free = pyatexit_free,
};

/* The one exported symbol. */
PyMODINIT_FUNC  // NOLINTNEXTLINE(misc-use-internal-linkage)
PyInit_pyatexit(void)
{
    return PyModuleDef_Init(&pyatexit_module);
}
