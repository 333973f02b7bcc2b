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
 * with snprintf() and written with write(2) to descriptor 1 as it is then.
 *
 * Counting is exact without a lock or an atomic read-modify-write on the
 * inc() path: the counts live in tallies that each have one writer at a
 * time, so a relaxed load and store is an exact add.  With a GIL the writer
 * of a tally is its interpreter's GIL holder: each interpreter that imports
 * the module claims one, and every Counter keeps a pointer to it.  On
 * free-threaded builds the writer is a thread: each thread claims a tally on
 * its first count and gives it back when it ends.  The report adds up all
 * the tallies.  A forked child starts its tallies at zero, so that each
 * process reports its own calls.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Compatibility: the CPython versions told apart, and the shims          */

#define PY310_PLUS (PY_VERSION_HEX >= 0x030A0000)
#define PY311_PLUS (PY_VERSION_HEX >= 0x030B0000)
#define PY312_PLUS (PY_VERSION_HEX >= 0x030C0000)
#define PY313_PLUS (PY_VERSION_HEX >= 0x030D0000)

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

#ifndef Py_TPFLAGS_MANAGED_DICT /* 3.9, 3.10: always tp_dictoffset */
#define Py_TPFLAGS_MANAGED_DICT 0
#endif

/* A type's version tag: 0 while it has none (changed since its last
 * look-up, or out of tags); never the same for two states of types.  Before
 * 3.12 a changed type keeps its tag, and only a flag says it is stale; on
 * free-threaded builds other threads write it, atomically. */
static inline unsigned int
type_version(PyTypeObject *type)
{
#ifdef Py_GIL_DISABLED
    return _Py_atomic_load_uint_relaxed(&type->tp_version_tag);
#elif PY312_PLUS
    return type->tp_version_tag;
#else
    return PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)
               ? type->tp_version_tag
               : 0;
#endif
}

/* Weak references: from 3.12 CPython keeps the list before the object, in
 * the space that a subclass's managed __dict__ shares; before, in a slot. */
#if PY312_PLUS
#define COUNTER_WEAKREF_FLAG Py_TPFLAGS_MANAGED_WEAKREF
#else
#include <structmember.h>
#define COUNTER_WEAKLIST_SLOT
#define COUNTER_WEAKREF_FLAG 0
#endif

#if !PY310_PLUS
static inline PyObject *
Py_NewRef(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}

static inline PyObject *
Py_XNewRef(PyObject *obj)
{
    Py_XINCREF(obj);
    return obj;
}
#endif

/* Look-ups that return a strong reference, from 3.13; before, every build
 * has a GIL, and nothing can run between the look-up and the incref.  On
 * free-threaded builds another thread can free what a borrowed look-up
 * returns (a class attribute rebound, an item replaced) at any moment. */
#if !PY313_PLUS
static inline int
PyDict_GetItemRef(PyObject *dict, PyObject *key, PyObject **result)
{
    *result = Py_XNewRef(PyDict_GetItemWithError(dict, key));
    return *result != NULL ? 1 : PyErr_Occurred() ? -1 : 0;
}

/* Public from 3.13. */
#define Py_IsFinalizing _Py_IsFinalizing
#endif
#if !PY311_PLUS /* for __slotnames__, read here before 3.11 */
static inline PyObject *
PyList_GetItemRef(PyObject *list, Py_ssize_t index)
{
    return Py_XNewRef(PyList_GetItem(list, index));
}
#endif

/* With a GIL, a tally is written by its interpreter's GIL holder, and each
 * module object (one per interpreter) holds one; free-threaded, by one
 * thread (see thread_tally). */
#if defined(COUNT_ALL_DEC_INC) && !defined(Py_GIL_DISABLED)
#define TALLY_PER_INTERPRETER
#endif

/* With a GIL, each interpreter keeps a few freed Counters for the next
 * Counter(n) (the vectorcall fast path, 3.10+): that saves the allocator and
 * the collector's bookkeeping, a quarter of what Counter(n) costs.
 * Free-threaded builds allocate each. */
#if !defined(Py_GIL_DISABLED) && PY310_PLUS
#define SPARE_COUNTERS 16
#endif

typedef struct {
    PyTypeObject *Counter_Type;
    PyObject *count_descr;    /* Counter.count, the getset descriptor */
    int watches_finalisation; /* counted in main_modules */
#ifdef TALLY_PER_INTERPRETER
    struct tally *tally; /* this interpreter's share of the counts */
#endif
#ifdef SPARE_COUNTERS
    /* Freed Counters of Counter_Type, untracked, holding no references.
     * They are kept only while Counter_Type is set, and freed before it is
     * dropped: freeing one reads its type. */
    int spares;
    PyObject *spare[SPARE_COUNTERS];
#endif
} pyatexit_state;

static PyModuleDef pyatexit_module;

#if PY311_PLUS
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

static void *
module_cleared(void)
{
    PyErr_SetString(PyExc_RuntimeError,
                    "pyatexit.Counter used after its module was cleared");
    return NULL;
}

/* The module that made type (a Counter type or a subclass), borrowed, or
 * NULL with an exception once the collector has cleared the type or the
 * module, as in a cycle being freed whose objects a finalizer can still
 * reach.  type_clear() empties tp_mro, which PyType_GetModuleByDef() does
 * not expect. */
static PyObject *
counter_module(PyTypeObject *type)
{
    PyObject *module = type->tp_mro != NULL
                           ? type_module_by_def(type, &pyatexit_module)
                           : NULL;
    if (module == NULL) {
        PyErr_Clear();
        return module_cleared();
    }
    return module;
}

/* The state of counter_module(type), NULL with an exception if the module
 * has dropped its type. */
static pyatexit_state *
counter_type_state(PyTypeObject *type)
{
    PyObject *module = counter_module(type);
    if (module == NULL) {
        return NULL;
    }
    pyatexit_state *state = PyModule_GetState(module);
    if (state == NULL || state->Counter_Type == NULL) {
        return module_cleared();
    }
    return state;
}

/* ---------------------------------------------------------------------- */
/* Process-wide instrumentation (COUNT_ALL_DEC_INC): tallies              */

#ifdef COUNT_ALL_DEC_INC

/* Tallies are never freed: the exit report reads them after every module
 * and thread is gone.  A tally given back is claimed again, counts and all,
 * by the next module or thread, so the list grows only to the number of
 * writers alive at the same time.  Each has a cache line of its own, so
 * that threads counting in parallel never share one. */
typedef struct tally {
    alignas(64) _Atomic uint64_t inc;
    _Atomic uint64_t dec;
    atomic_int in_use;
#ifdef TALLY_PER_INTERPRETER
    /* The module that claimed it and the live Counters that count into it:
     * it is given back when the last of them goes, so that a Counter that
     * outlives its module still has it to itself.  Only its interpreter's
     * GIL holder changes it. */
    Py_ssize_t holders;
#endif
    struct tally *next; /* fixed before the tally is published */
} tally;

static _Atomic(tally *) tallies;

/* Where a new tally's counts start: 0.  A test build (setup.py,
 * PYATEXIT_TALLY_START) starts them near 2**32, to show a 32-bit system
 * counting past it without making four billion calls. */
#ifndef PYATEXIT_TALLY_START
#define PYATEXIT_TALLY_START 0
#endif
#define TALLY_START ((uint64_t)(PYATEXIT_TALLY_START))

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
    t = aligned_alloc(alignof(tally), sizeof(tally));
    if (t == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    atomic_init(&t->inc, TALLY_START);
    atomic_init(&t->dec, TALLY_START);
    atomic_init(&t->in_use, 1);
    t->next = atomic_load_explicit(&tallies, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(
        &tallies, &t->next, t, memory_order_release, memory_order_relaxed)) {
    }
    return t;
}

/* The release pairs with the acquire of the next claim: its writer then
 * sees the counts this one left. */
static void
tally_release(tally *t)
{
    atomic_store_explicit(&t->in_use, 0, memory_order_release);
}

/* Only the tally's writer adds, so a relaxed load and store (a plain add in
 * machine code) is exact, and a reader never sees a torn value.  The counts
 * are 64 bits everywhere: on 32-bit x86 and ARMv7 such loads and stores are
 * still lock-free (x87 fild/fistp; ldrexd/strexd), with no libatomic. */
static inline void
tally_add(_Atomic uint64_t *n)
{
    atomic_store_explicit(n,
                          atomic_load_explicit(n, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static void
tally_totals(uint64_t *inc, uint64_t *dec)
{
    *inc = 0;
    *dec = 0;
    tally *t = atomic_load_explicit(&tallies, memory_order_acquire);
    for (; t != NULL; t = t->next) {
        *inc += atomic_load_explicit(&t->inc, memory_order_relaxed);
        *dec += atomic_load_explicit(&t->dec, memory_order_relaxed);
    }
}

#ifdef Py_GIL_DISABLED
/* The calling thread's tally.  Claimed on the thread's first count; a
 * pthread key's destructor gives it back when the thread ends.
 *
 * The initial-exec TLS model reaches it without a call.  The default model
 * for a shared library calls __tls_get_addr() on every count, which costs
 * 5 to 9 % of an inc() (see benchmarks/bench.py).  glibc keeps room
 * in the static TLS block for a few bytes of initial-exec TLS in libraries
 * loaded with dlopen(), as CPython loads this module.  Other libcs (musl,
 * macOS, the BSDs) get the default model; PYATEXIT_PORTABLE_TLS builds that
 * path on glibc too, so that it is tested. */
#if defined(__GLIBC__) && defined(__GNUC__) && !defined(PYATEXIT_PORTABLE_TLS)
#define TLS_MODEL_INITIAL_EXEC __attribute__((tls_model("initial-exec")))
#else
#define TLS_MODEL_INITIAL_EXEC
#endif
static _Thread_local tally *thread_tally TLS_MODEL_INITIAL_EXEC;
static pthread_key_t thread_tally_key;

static void
thread_tally_give_back(void *t)
{
    thread_tally = NULL; /* a later count on this thread claims again */
    tally_release(t);
}

static tally *
thread_tally_claim(void)
{
    tally *t = tally_claim();
    if (t == NULL) {
        return NULL;
    }
    if (pthread_setspecific(thread_tally_key, t) != 0) {
        tally_release(t);
        PyErr_NoMemory();
        return NULL;
    }
    thread_tally = t;
    return t;
}
#endif

/* The tally that a count on self goes to.  Free-threaded, a thread's first
 * count claims one, and that can fail (NULL with an exception); with a GIL
 * the Counter has it, and TALLY_MISSING() is a constant.  But 3.9 cannot
 * make the type immutable: a Counter.__new__ replaced there makes Counters
 * that Counter_new() never saw, which take their tally on their first
 * count. */
#if defined(TALLY_PER_INTERPRETER) && PY310_PLUS
#define TALLY_OF(self) ((self)->tally)
#define TALLY_MISSING(t) 0
#elif defined(TALLY_PER_INTERPRETER)
#define TALLY_OF(self) \
    ((self)->tally != NULL ? (self)->tally : counter_attach_late(self))
#define TALLY_MISSING(t) ((t) == NULL)
#else
#define TALLY_OF(self) \
    ((void)(self), thread_tally != NULL ? thread_tally : thread_tally_claim())
#define TALLY_MISSING(t) ((t) == NULL)
#endif

#ifdef TALLY_PER_INTERPRETER
static void
tally_hold(tally *t)
{
    t->holders++;
}

static void
tally_drop(tally *t)
{
    if (t != NULL && --t->holders == 0) {
        tally_release(t);
    }
}
#endif

/* ---------------------------------------------------------------------- */
/* Fork and process set-up                                                */

/* The report's registration (see report_register()). */
enum { REPORT_UNREGISTERED, REPORT_REGISTERING, REPORT_REGISTERED };
static atomic_int report_state;

static void close_std_copies(void);

/* A forked child has only the thread that forked: it starts counting from
 * zero, and the tallies of the threads it does not have are free again.
 * It closes any copies of its parent's standard streams (std_copies).
 * A registration that another thread had under way is lost with that
 * thread, before its Py_AtExit() call took effect (see report_register()):
 * the child's next Counter registers again. */
static void
after_fork_in_child(void)
{
    int registering = REPORT_REGISTERING;
    (void)atomic_compare_exchange_strong_explicit(&report_state,
                                                  &registering,
                                                  REPORT_UNREGISTERED,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed);
    tally *t = atomic_load_explicit(&tallies, memory_order_acquire);
    for (; t != NULL; t = t->next) {
        atomic_store_explicit(&t->inc, 0, memory_order_relaxed);
        atomic_store_explicit(&t->dec, 0, memory_order_relaxed);
#ifdef Py_GIL_DISABLED
        if (t != thread_tally) {
            atomic_store_explicit(&t->in_use, 0, memory_order_relaxed);
        }
#endif
    }
    close_std_copies();
}

/* What is set up once per process, whichever interpreter imports first. */
static pthread_once_t process_setup_once = PTHREAD_ONCE_INIT;
static int process_setup_error;

static void
process_setup(void)
{
    process_setup_error = pthread_atfork(NULL, NULL, after_fork_in_child);
#ifdef Py_GIL_DISABLED
    if (process_setup_error == 0) {
        process_setup_error =
            pthread_key_create(&thread_tally_key, thread_tally_give_back);
    }
#endif
}

static int
process_set_up(void)
{
    int err = pthread_once(&process_setup_once, process_setup);
    if (err == 0) {
        err = process_setup_error;
    }
    if (err != 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The standard streams and their copies                                  */

/* Where the report may go: descriptor 1 (2 for the PYATEXIT_DUMP_FILE
 * fallback) as it is at exit, wherever the program has pointed it, unless
 * an interpreter that imported pyatexit started without that stream
 * (sys.__stdout__ was None when it imported pyatexit: finalisation sets it
 * to None too, so it is read at import), or the descriptor was closed when
 * the report was registered or when finalisation started.  Then any file
 * that later takes the descriptor is the program's data, not its output.
 * Index 0 is descriptor 1, index 1 descriptor 2. */
static atomic_int std_missing[2];
static atomic_int std_closed_at_registration[2];
static atomic_int std_closed_at_finalisation[2];

/* Which file a descriptor refers to. */
struct file_id {
    dev_t dev;
    ino_t ino;
};

static int
is_file(int fd, const struct file_id *id)
{
    struct stat now;
    return fd >= 0 && fstat(fd, &now) == 0 && now.st_dev == id->dev &&
           now.st_ino == id->ino;
}

/* The files of descriptors 1 and 2 when the report was registered, where
 * they were open: without a copy (below), the report is written to a
 * descriptor only while it is still that file. */
static struct file_id std_at_registration[2];

/* A regular file on descriptor 1 or 2 at registration is held open (a
 * close-on-exec copy) until the report, so that its inode number, which
 * is its identity, cannot be given to a file created meanwhile (the
 * program may delete it and close the descriptor).  Nothing else is held:
 * a pipe's reader must see its end when the program closes it. */
static atomic_int std_pins[2] = {-1, -1};

/* A Python file object that owns descriptor 1 (sys.stdout = open(1, "w"),
 * to change its encoding or buffering) closes it when finalisation frees
 * it, before the report is written.  So when finalisation starts (the
 * main interpreter's atexit callbacks, or a first Counter made after
 * them), a copy of each usable descriptor is taken, to write to if the
 * descriptor is closed by then: the program's own close, before that,
 * leaves none.  Nothing is held during the program's life: a daemon that
 * closes its standard streams closes its parent's pipe, and a forked child
 * closes the copies it inherits.  A copy is used only while it is still the
 * file it was made from (the program may close it and open another).
 * fd is -1 without a copy, and COPY_BEING_TAKEN while one is made. */
enum { COPY_BEING_TAKEN = -2 };
static struct std_copy {
    atomic_int fd;
    struct file_id id;
} std_copies[2] = {{.fd = -1}, {.fd = -1}};
static atomic_int finalisation_started;

static void
note_std_streams(void)
{
    /* Compared only: nothing can run between the look-up and the test, and
     * None is immortal. */
    if (PySys_GetObject("__stdout__") == Py_None) {
        atomic_store_explicit(&std_missing[0], 1, memory_order_relaxed);
    }
    if (PySys_GetObject("__stderr__") == Py_None) {
        atomic_store_explicit(&std_missing[1], 1, memory_order_relaxed);
    }
}

/* A subinterpreter's sys.__stdout__ is built on descriptor 1 as it is when
 * the subinterpreter starts: perhaps a data file that a main interpreter
 * started without a standard output opened.  So the first import in a
 * subinterpreter reads the main interpreter's streams as well, in a thread
 * state of its own there, taking the main interpreter's GIL, while the
 * main interpreter is not being finalised (then a new thread state there
 * could never run). */
static atomic_int main_streams_noted;
static void note_forwarded_streams(void);

static void
note_main_std_streams(void)
{
    PyInterpreterState *main_interp = PyInterpreterState_Main();
    if (PyInterpreterState_Get() == main_interp) {
        atomic_store_explicit(&main_streams_noted, 1, memory_order_relaxed);
        note_forwarded_streams();
        return;
    }
    if (atomic_exchange_explicit(
            &main_streams_noted, 1, memory_order_relaxed)) {
        return;
    }
    if (Py_IsFinalizing()) {
        /* Too late to read them (finalisation has set them to None), and
         * descriptor 1 may be a data file that the main interpreter opened:
         * nothing is written to the standard descriptors. */
        atomic_store_explicit(&std_missing[0], 1, memory_order_relaxed);
        atomic_store_explicit(&std_missing[1], 1, memory_order_relaxed);
        return;
    }
    PyThreadState *there = PyThreadState_New(main_interp);
    if (there == NULL) {
        return;
    }
    PyThreadState *here = PyEval_SaveThread();
    PyEval_RestoreThread(there);
    note_std_streams();
    PyThreadState_Clear(there);
    PyThreadState_DeleteCurrent();
    PyEval_RestoreThread(here);
}

static int
std_usable(int fd)
{
    return !atomic_load_explicit(&std_missing[fd - 1], memory_order_relaxed) &&
           !atomic_load_explicit(&std_closed_at_finalisation[fd - 1],
                                 memory_order_relaxed) &&
           !atomic_load_explicit(&std_closed_at_registration[fd - 1],
                                 memory_order_relaxed);
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

/* Writes to a standard descriptor, after what C code left in stdio's
 * buffer for it: to the copy taken when finalisation started, the
 * standard stream the process had then, while it is still that file;
 * else to the descriptor itself, while it is the file the copy was made
 * from or, with no copy taken (the program removed pyatexit's atexit
 * callback, or left no descriptor free), the file it was when the report
 * was registered.  Once finalisation has closed the descriptor (a file
 * object of its own on it), a file opened later (by a __del__) can take
 * its number, and that file's data must not get the report. */
static void
write_to_std(int fd, const char *buf, size_t len)
{
    if (!std_usable(fd)) {
        return;
    }
    (void)fflush(fd == 1 ? stdout : stderr);
    struct std_copy *copy = &std_copies[fd - 1];
    int saved = atomic_load_explicit(&copy->fd, memory_order_acquire);
    const struct file_id *was =
        saved >= 0 ? &copy->id : &std_at_registration[fd - 1];
    int to = is_file(saved, &copy->id) ? saved : is_file(fd, was) ? fd : -1;
    if (to >= 0) {
        (void)write_all(to, buf, len);
    }
}

/* Takes the copies of the usable standard descriptors (see std_copies),
 * once, from whichever thread gets there first: of source[0] for
 * descriptor 1 and source[1] for descriptor 2 (see std_forwarded_to). */
static void
keep_std_streams(const int source[2])
{
    for (int fd = 1; fd <= 2; fd++) {
        struct std_copy *copy = &std_copies[fd - 1];
        int none = -1;
        if (!std_usable(fd) ||
            !atomic_compare_exchange_strong_explicit(&copy->fd,
                                                     &none,
                                                     COPY_BEING_TAKEN,
                                                     memory_order_acquire,
                                                     memory_order_relaxed)) {
            continue;
        }
        int saved = fcntl(source[fd - 1], F_DUPFD_CLOEXEC, 3);
        if (saved < 0 && errno == EBADF) {
            /* Closed by the program before it ended: nothing is written,
             * even to a file a __del__ opens under its number later. */
            atomic_store_explicit(
                &std_closed_at_finalisation[fd - 1], 1, memory_order_relaxed);
        }
        struct stat st;
        if (saved >= 0 && fstat(saved, &st) != 0) {
            (void)close(saved);
            saved = -1;
        }
        if (saved >= 0) {
            copy->id = (struct file_id){st.st_dev, st.st_ino};
        }
        atomic_store_explicit(&copy->fd, saved, memory_order_release);
    }
}

/* Closes the copies (and the files held since registration): after the
 * report, and in a forked child, which must not keep its parent's streams
 * open. */
static void
close_std_copies(void)
{
    for (int i = 0; i < 2; i++) {
        int saved = atomic_exchange_explicit(
            &std_copies[i].fd, -1, memory_order_acq_rel);
        if (saved >= 0) {
            (void)close(saved);
        }
        int pin =
            atomic_exchange_explicit(&std_pins[i], -1, memory_order_relaxed);
        if (pin >= 0) {
            (void)close(pin);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Writing the report                                                     */

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

/* clang-format off */
#define REPORT_FORMAT                      \
    "==== dump_inc_dec_count() ====\n"     \
    "Increments: %" PRIu64 "\n"            \
    "Decrements: %" PRIu64 "\n"            \
    "== dump_inc_dec_count() END ==\n"
/* clang-format on */

/* A longer PYATEXIT_DUMP_FILE is shown as its start, "...", and its end. */
enum { SHOWN_PATH_MAX = 1024, SHOWN_PATH_PART = SHOWN_PATH_MAX / 2 - 2 };

/* The report, when PYATEXIT_DUMP_FILE cannot take it: to stderr, after one
 * line that says why. */
static void
report_to_stderr(const char *path, int err, const char *report, size_t len)
{
    char why[SHOWN_PATH_MAX + 512];
    size_t path_len = strlen(path);
    int shown = path_len > SHOWN_PATH_MAX ? SHOWN_PATH_PART : (int)path_len;
    int n = snprintf(
        why,
        sizeof(why),
        "pyatexit: cannot append the report to "
        "PYATEXIT_DUMP_FILE=%.*s%s%s: %s\n",
        shown,
        path,
        path_len > SHOWN_PATH_MAX ? "..." : "",
        path_len > SHOWN_PATH_MAX ? path + path_len - SHOWN_PATH_PART : "",
        strerror(err));
    if (n > 0 && (size_t)n + len < sizeof(why)) {
        memcpy(why + n, report, len);
        write_to_std(2, why, (size_t)n + len);
    }
    else {
        write_to_std(2, report, len);
    }
}

/* Registered with Py_AtExit(): runs after finalisation, so only C. */
static void
dump_inc_dec_count(void)
{
    /* Pairs with the release in report_register(): the flags are set. */
    if (atomic_load_explicit(&report_state, memory_order_acquire) !=
        REPORT_REGISTERED) {
        return;
    }
    char report[sizeof(REPORT_FORMAT) + 40]; /* two 20-digit numbers */
    uint64_t inc, dec;
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
        write_to_std(1, report, (size_t)len);
    }
    else {
        int err = append_to_file(path, report, (size_t)len);
        if (err != 0) {
            report_to_stderr(path, err, report, (size_t)len);
        }
    }

    if (restore) {
        (void)sigaction(SIGPIPE, &saved, NULL);
    }
    /* CPython forgets its Py_AtExit() functions once it has called them.  An
     * application embedding Python that initialises it again registers the
     * report again with its next first Counter (the counts go on), and its
     * standard streams are seen anew. */
    close_std_copies();
    atomic_store_explicit(&finalisation_started, 0, memory_order_relaxed);
    atomic_store_explicit(&std_missing[0], 0, memory_order_relaxed);
    atomic_store_explicit(&std_missing[1], 0, memory_order_relaxed);
    atomic_store_explicit(&main_streams_noted, 0, memory_order_relaxed);
    atomic_store_explicit(
        &report_state, REPORT_UNREGISTERED, memory_order_release);
}

/* ---------------------------------------------------------------------- */
/* Registration                                                           */

/* Registers the report once per process, from whichever thread or
 * interpreter allocates the first Counter, before that Counter exists.  On
 * failure a later allocation tries again.
 *
 * Between the compare-and-swap and REGISTERED nothing runs Python code or
 * lets this thread detach, so a stop-the-world (os.fork(), the exit) cannot
 * fall in the middle, with one exception: from 3.13, Py_AtExit() takes a
 * mutex, and waiting for it detaches, before it adds the function.  A fork
 * then leaves the child REGISTERING, which after_fork_in_child() undoes.
 * Threads that find a registration under way wait for it, detached, so that
 * no Counter exists before its report is registered. */
static int
report_register_slow(void)
{
    for (;;) {
        int expected = REPORT_UNREGISTERED;
        if (atomic_compare_exchange_strong_explicit(&report_state,
                                                    &expected,
                                                    REPORT_REGISTERING,
                                                    memory_order_acq_rel,
                                                    memory_order_acquire)) {
            break;
        }
        if (expected == REPORT_REGISTERED) {
            return 0;
        }
#if PY313_PLUS
        /* A registering thread stopped by finalisation never finishes. */
        if (Py_IsFinalizing()) {
            return 0;
        }
#endif
        PyThreadState *detached = PyEval_SaveThread();
        (void)sched_yield();
        PyEval_RestoreThread(detached);
    }
    /* Closed, unless finalisation started with it open and closed it. */
    for (int i = 0; i < 2; i++) {
        struct stat st;
        int closed = fstat(i + 1, &st) != 0;
        if (!closed) {
            std_at_registration[i] = (struct file_id){st.st_dev, st.st_ino};
            if (S_ISREG(st.st_mode) &&
                atomic_load_explicit(&std_pins[i], memory_order_relaxed) < 0) {
                atomic_store_explicit(&std_pins[i],
                                      fcntl(i + 1, F_DUPFD_CLOEXEC, 3),
                                      memory_order_relaxed);
            }
        }
        atomic_store_explicit(
            &std_closed_at_registration[i],
            closed && atomic_load_explicit(&std_copies[i].fd,
                                           memory_order_acquire) < 0,
            memory_order_relaxed);
    }
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
    /* A first Counter made once finalisation has started (by a later
     * atexit callback, a __del__) takes the copies itself. */
    if (atomic_load_explicit(&finalisation_started, memory_order_relaxed)) {
        static const int standard[2] = {1, 2};
        keep_std_streams(standard);
    }
    return 0;
}

static inline int
report_register(void)
{
    if (atomic_load_explicit(&report_state, memory_order_acquire) ==
        REPORT_REGISTERED) {
        return 0;
    }
    return report_register_slow();
}

/* The start of finalisation, for keep_std_streams(): an atexit callback of
 * the main interpreter (a subinterpreter's run when it ends, during the
 * program's life).  At the exit they run with no Python frame below them;
 * atexit._run_exitfuncs() called by the program runs them from its code,
 * and the program goes on.  It is not a method of the module, so that it
 * holds no module alive until the exit. */
/* ---------------------------------------------------------------------- */
/* The start of finalisation                                              */

/* The integer attribute name of obj, or -1 (the error, if any, cleared:
 * an object without it is not the stream looked for). */
static long
int_attribute(PyObject *obj, const char *name)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    long n = -1;
    if (value != NULL && PyLong_Check(value)) {
        n = PyLong_AsLong(value);
    }
    Py_XDECREF(value);
    PyErr_Clear();
    return n;
}

/* The descriptor that an ipykernel stream in sys.stdout (fd 1) or
 * sys.stderr (fd 2) forwards fd to, or -1.  A Jupyter kernel (ipykernel 6
 * and later) points descriptors 1 and 2 at pipes that threads of its own
 * read and copy to the kernel's real streams; finalisation stops those
 * threads before the report, which would be lost in the pipe.  Its stream
 * objects name the copy of the real stream that they write to. */
static int
ipykernel_forwards(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) {
        return -1;
    }
    PyObject *sys = PyImport_ImportModule("sys");
    PyObject *stream = sys == NULL ? NULL
                                   : PyObject_GetAttrString(
                                         sys, fd == 1 ? "stdout" : "stderr");
    Py_XDECREF(sys);
    PyErr_Clear();
    if (stream == NULL) {
        return -1;
    }
    /* Only ipykernel's own stream (OutStream, or a subclass), with
     * ipykernel loaded: another object with those attributes is not it. */
    PyObject *name = PyUnicode_FromString("ipykernel.iostream");
    PyObject *iostream = name == NULL ? NULL : PyImport_GetModule(name);
    Py_XDECREF(name);
    PyObject *kind = iostream == NULL
                         ? NULL
                         : PyObject_GetAttrString(iostream, "OutStream");
    Py_XDECREF(iostream);
    PyErr_Clear();
    int ipykernel = kind != NULL && PyType_Check(kind) &&
                    PyType_IsSubtype(Py_TYPE(stream), (PyTypeObject *)kind);
    Py_XDECREF(kind);
    long real = -1;
    if (ipykernel) {
        PyObject *watching = PyObject_GetAttrString(stream, "_should_watch");
        int forwards = watching != NULL && PyObject_IsTrue(watching) == 1;
        Py_XDECREF(watching);
        PyErr_Clear();
        if (forwards &&
            int_attribute(stream, "_original_stdstream_fd") == fd) {
            real = int_attribute(stream, "_original_stdstream_copy");
        }
    }
    Py_DECREF(stream);
    if (real <= 2 || real > INT_MAX || fcntl((int)real, F_GETFD) == -1) {
        return -1;
    }
    return (int)real;
}

/* Where ipykernel forwarded descriptors 1 and 2 when the main interpreter
 * imported pyatexit (in a cell, as a rule): a cell may replace sys.stdout
 * later, and then the stream is found again by its descriptor, while that
 * is still the same file. */
static struct {
    atomic_int fd;
    struct file_id id;
} forwarded_at_import[2] = {{.fd = -1}, {.fd = -1}};

static void
note_forwarded_streams(void)
{
    for (int fd = 1; fd <= 2; fd++) {
        int real = ipykernel_forwards(fd);
        struct stat st;
        if (real >= 0 && fstat(real, &st) == 0) {
            forwarded_at_import[fd - 1].id =
                (struct file_id){st.st_dev, st.st_ino};
            atomic_store_explicit(
                &forwarded_at_import[fd - 1].fd, real, memory_order_release);
        }
    }
}

/* The descriptor that stands for standard descriptor fd (1 or 2) at the
 * exit: fd itself, unless ipykernel forwards it (ipykernel_forwards), now
 * or when pyatexit was imported. */
static int
std_forwarded_to(int fd)
{
    int real = ipykernel_forwards(fd);
    if (real >= 0) {
        return real;
    }
    struct stat st;
    int then = atomic_load_explicit(&forwarded_at_import[fd - 1].fd,
                                    memory_order_acquire);
    if (then > 2 && fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode) &&
        is_file(then, &forwarded_at_import[fd - 1].id)) {
        return then;
    }
    return fd;
}

static PyObject *
finalisation_starts(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored))
{
    PyFrameObject *caller = PyThreadState_GetFrame(PyThreadState_Get());
    if (caller != NULL) {
        Py_DECREF(caller);
        Py_RETURN_NONE;
    }
    /* Taken even before the first Counter: a __del__ may make it once
     * finalisation has closed descriptor 1.  The report closes them, or
     * the module when it is freed without one (an embedding application
     * goes on after finalising). */
    int source[2] = {std_forwarded_to(1), std_forwarded_to(2)};
    atomic_store_explicit(&finalisation_started, 1, memory_order_relaxed);
    keep_std_streams(source);
    Py_RETURN_NONE;
}

static PyMethodDef finalisation_starts_def = {
    "_pyatexit_finalisation_starts", finalisation_starts, METH_NOARGS, NULL};

/* The main interpreter's pyatexit modules alive (a re-import after
 * `del sys.modules["pyatexit"]`, or importlib.reload(), makes another):
 * the copies are the process's, closed by the last of them to go. */
static atomic_int main_modules;

static int
watch_finalisation_start(pyatexit_state *state)
{
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        return 0;
    }
    PyObject *atexit = PyImport_ImportModule("atexit");
    if (atexit == NULL) {
        return -1;
    }
    PyObject *callback = PyCFunction_New(&finalisation_starts_def, NULL);
    PyObject *done = callback == NULL ? NULL
                                      : PyObject_CallMethod(
                                            atexit, "register", "O", callback);
    Py_XDECREF(callback);
    Py_DECREF(atexit);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    state->watches_finalisation = 1;
    atomic_fetch_add_explicit(&main_modules, 1, memory_order_relaxed);
    return 0;
}

/* A main interpreter's module freed once finalisation has started, with no
 * report registered to close the copies: the last one closes them (an
 * embedding application goes on after finalising). */
static void
unwatch_finalisation_start(pyatexit_state *state)
{
    if (!state->watches_finalisation) {
        return;
    }
    state->watches_finalisation = 0;
    if (atomic_fetch_sub_explicit(&main_modules, 1, memory_order_relaxed) ==
            1 &&
        atomic_load_explicit(&finalisation_started, memory_order_relaxed) &&
        atomic_load_explicit(&report_state, memory_order_acquire) !=
            REPORT_REGISTERED) {
        close_std_copies();
    }
}

/* A module's share of the instrumentation, from its exec to its free. */
static int
instrument_module(pyatexit_state *state)
{
    if (process_set_up() < 0) {
        return -1;
    }
#ifdef TALLY_PER_INTERPRETER
    state->tally = tally_claim();
    if (state->tally == NULL) {
        return -1;
    }
    state->tally->holders = 1;
#endif
    note_std_streams();
    note_main_std_streams();
    return watch_finalisation_start(state);
}

static void
uninstrument_module(pyatexit_state *state)
{
    unwatch_finalisation_start(state);
#ifdef TALLY_PER_INTERPRETER
    tally_drop(state->tally);
    state->tally = NULL;
#endif
}

/* One counted step, in the tally t of TALLY_OF(). */
#define tally_step(t, up) tally_add((up) ? &(t)->inc : &(t)->dec)
#define BUILT_WITH_COUNTING Py_True

#else /* !COUNT_ALL_DEC_INC */

/* Nothing to count: the stubs of what the Counter and module half call. */
typedef struct tally tally; /* never defined */
#define TALLY_OF(self) ((void)(self), (tally *)NULL)
#define TALLY_MISSING(t) ((void)(t), 0)
#define tally_step(t, up) ((void)(t), (void)(up))
#define report_register() 0
#define instrument_module(state) ((void)(state), 0)
#define uninstrument_module(state) ((void)(state))
#define BUILT_WITH_COUNTING Py_False

#endif /* COUNT_ALL_DEC_INC */

/* ---------------------------------------------------------------------- */
/* Counter objects: layout, count and lifecycle                          */

typedef struct {
    PyObject_HEAD
    int64_t count;
    /* The version tag of its type when count was last found to be
     * Counter's own (see count_is_own()), or 0. */
    atomic_uint own_count_version;
#ifdef TALLY_PER_INTERPRETER
    struct tally *tally; /* the tally of its interpreter */
#endif
#ifdef COUNTER_WEAKLIST_SLOT
    PyObject *weakreflist;
#endif
} CounterObject;

#define CounterObject_CAST(op) ((CounterObject *)(op))

/* The module that made a Counter type or subclass type, borrowed (the type
 * holds it), and its state: NULL once the collector has cleared it. */
static inline PyObject *
heap_type_module(PyTypeObject *type)
{
    return ((PyHeapTypeObject *)type)->ht_module;
}

static inline pyatexit_state *
module_state(PyObject *module)
{
    return module != NULL ? PyModule_GetState(module) : NULL;
}

/* A new Counter takes a hold on its interpreter's tally (see tally). */
#ifdef TALLY_PER_INTERPRETER
#define counter_attach_tally(self, state) \
    ((self)->tally = (state)->tally, tally_hold((self)->tally))
#else
#define counter_attach_tally(self, state) ((void)(self), (void)(state))
#endif

static void Counter_dealloc(PyObject *op);

/* The Counter type (of any pyatexit module) that type is or derives from,
 * found along its solid bases, which fix its instances' layout: NULL if its
 * instances are not Counters. */
static PyTypeObject *
counter_base(PyTypeObject *type)
{
    while (type != NULL && type->tp_dealloc != Counter_dealloc) {
        type = type->tp_base;
    }
    return type;
}

static int64_t
counter_get(PyObject *op)
{
    int64_t count;
    Py_BEGIN_CRITICAL_SECTION(op);
    count = CounterObject_CAST(op)->count;
    Py_END_CRITICAL_SECTION();
    return count;
}

static void
counter_set(PyObject *op, int64_t count)
{
    Py_BEGIN_CRITICAL_SECTION(op);
    CounterObject_CAST(op)->count = count;
    Py_END_CRITICAL_SECTION();
}

/* Whether type gives `count` a meaning of its own, hiding Counter's: a
 * class attribute of that name in a subclass (a default value such as
 * `count: int = 0`, a dataclass field, a property, a slot).  The Python
 * class's methods read and write `self.count` through the attribute
 * protocol, so they then use that attribute, and so do Counter's __init__,
 * inc() and dec().  1 if so, 0 if count is Counter's own; never fails.
 * *name is the name "count" (a new reference), or NULL where the collector
 * has cleared the module or the type: their instances count as they are. */
static int
count_redefined_in(PyTypeObject *type, PyObject **name)
{
    *name = NULL;
    PyTypeObject *base = counter_base(type);
    PyObject *module = base != NULL ? heap_type_module(base) : NULL;
    pyatexit_state *state = module_state(module);
    if (state == NULL || state->count_descr == NULL) {
        return 0;
    }
    /* CPython's own attribute look-up on the type, with its cache, which
     * runs no Python code (a type's dict has only exact str keys).  Its
     * borrowed result is only compared with the descriptor, which the
     * module held across the look-up keeps.  Nothing found: a type the
     * collector has cleared. */
    Py_INCREF(module);
    PyObject *descr = state->count_descr;
    *name = Py_NewRef(PyDescr_NAME(descr));
    PyObject *found = _PyType_Lookup(type, *name);
    Py_DECREF(module);
    return found != NULL && found != descr;
}

/* The Python class keeps count in the instance's __dict__, where it stays
 * when a class that redefined count stops doing so (the class attribute
 * deleted, __class__ or __bases__ assigned): an int in the 64-bit range
 * that an instance's __dict__ holds under that name then moves into its
 * count.  Anything else stays in __dict__, unused, as would a value put
 * there while count is Counter's own.  The look-up can run Python code (a
 * key of another type with the same hash has an __eq__) that changes the
 * class again: then nothing moves.  1 if the class is still type at
 * version, 0 if not, -1 with an exception. */
static int
take_count_from_dict(PyObject *op,
                     PyObject *name,
                     PyTypeObject *type,
                     unsigned int version)
{
    if (type->tp_dictoffset == 0 &&
        !PyType_HasFeature(type, Py_TPFLAGS_MANAGED_DICT)) {
        return 1;
    }
    PyObject *dict = PyObject_GenericGetDict(op, NULL);
    if (dict == NULL) {
        return -1;
    }
    PyObject *value;
    int found = PyDict_GetItemRef(dict, name, &value);
    int same = Py_TYPE(op) == type && type_version(type) == version;
    int err = found < 0 ? -1 : 0;
    if (found > 0 && same && PyLong_Check(value)) {
        int overflow;
        long long count = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow) {
            counter_set(op, count);
            err = PyDict_DelItem(dict, name);
            if (err < 0 && PyErr_ExceptionMatches(PyExc_KeyError)) {
                PyErr_Clear(); /* removed meanwhile */
                err = 0;
            }
        }
    }
    Py_XDECREF(value); /* an int subclass's __del__ can run */
    Py_DECREF(dict);
    same = same && Py_TYPE(op) == type && type_version(type) == version;
    return err < 0 ? -1 : same;
}

/* Counter itself cannot be changed from 3.10: its instances never look
 * (3.9 lets Counter's own attributes be replaced). */
#if PY310_PLUS
#define COUNTER_EXACT(op) (Py_TYPE(op)->tp_dealloc == Counter_dealloc)
#else
#define COUNTER_EXACT(op) 0
#endif

/* Whether count is already known to be Counter's own for op: its type has
 * not changed since it was last found so, by count_is_own() for op or by
 * Counter_new().  Two loads and a comparison, so that a subclass's inc()
 * costs what a Counter's does. */
static inline int
count_known_own(PyObject *op)
{
    if (COUNTER_EXACT(op)) {
        return 1;
    }
    unsigned int version = type_version(Py_TYPE(op));
    return version != 0 &&
           version ==
               atomic_load_explicit(&CounterObject_CAST(op)->own_count_version,
                                    memory_order_relaxed);
}

static int
count_is_own_slow(PyObject *op, PyObject **redefined)
{
    /* Again while Python code run by the look-up in __dict__ changes the
     * class, a few times; then nothing moves, and it is looked at again the
     * next time. */
    for (int tries = 0;; tries++) {
        PyTypeObject *type = Py_TYPE(op);
        /* Read before the look-up: a change of the type after it gives
         * the type another tag, which never matches this one. */
        unsigned int version = type_version(type);
        PyObject *name;
        if (count_redefined_in(type, &name)) {
            *redefined = name;
            return 0;
        }
        if (name == NULL) {
            return 1; /* cleared by the collector: count as it is */
        }
        if (version == 0 && tries == 0) {
            Py_DECREF(name); /* the look-up may have given it a tag */
            continue;
        }
        int same = take_count_from_dict(op, name, type, version);
        Py_DECREF(name);
        if (same < 0) {
            return -1;
        }
        if (same && version != 0) {
            atomic_store_explicit(&CounterObject_CAST(op)->own_count_version,
                                  version,
                                  memory_order_relaxed);
        }
        if (same) {
            return 1;
        }
        if (tries == 3) {
            /* Still changing (other threads too rebind class attributes):
             * nothing moves, and count is what the class says now. */
            if (count_redefined_in(Py_TYPE(op), &name)) {
                *redefined = name;
                return 0;
            }
            Py_XDECREF(name);
            return 1;
        }
    }
}

/* 1 if count is Counter's own for op (see count_redefined_in()); 0 if its
 * class redefines count, with *redefined the name "count" (a new
 * reference); -1 with an exception.  *redefined is NULL unless 0. */
static inline int
count_is_own(PyObject *op, PyObject **redefined)
{
    *redefined = NULL;
    return count_known_own(op) ? 1 : count_is_own_slow(op, redefined);
}

/* `self.count = value` through the attribute protocol, as the Python class
 * does (see count_redefined_in()). */
static int
set_redefined_count(PyObject *op, PyObject *name, PyObject *value)
{
    int err = PyObject_SetAttr(op, name, value);
    Py_DECREF(name);
    return err;
}

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

/* The descriptor's own get and set (the class may redefine count and still
 * call them, through super() or Counter.count) take in a count left in
 * __dict__ all the same. */
static PyObject *
Counter_get_count(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *redefined;
    if (count_is_own(op, &redefined) < 0) {
        return NULL;
    }
    Py_XDECREF(redefined);
    return PyLong_FromLongLong(counter_get(op));
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
    PyObject *redefined;
    if (count_is_own(op, &redefined) < 0) {
        return -1;
    }
    Py_XDECREF(redefined);
    counter_set(op, count);
    return 0;
}

/* Subclasses (and 3.9) come here.  object.__new__ allocates, so that a
 * subclass gets the checks it makes, for abstract methods above all; the
 * arguments are left to __init__, as for a Python class. */
static PyObject *
Counter_new(PyTypeObject *type,
            PyObject *Py_UNUSED(args),
            PyObject *Py_UNUSED(kwds))
{
    if (counter_type_state(type) == NULL || report_register() < 0) {
        return NULL;
    }
    PyObject *no_args = PyTuple_New(0);
    if (no_args == NULL) {
        return NULL;
    }
    PyObject *self = PyBaseObject_Type.tp_new(type, no_args, NULL);
    Py_DECREF(no_args);
    if (self == NULL) {
        return NULL;
    }
    /* Again: allocating can run the collector, and so Python code. */
    pyatexit_state *state = counter_type_state(type);
    if (state == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    counter_attach_tally(CounterObject_CAST(self), state);
    /* Nothing to take from a new object's empty __dict__: its type is
     * enough (see count_known_own()). */
    unsigned int version = type_version(type);
    PyObject *name;
    if (!count_redefined_in(type, &name)) {
        atomic_store_explicit(&CounterObject_CAST(self)->own_count_version,
                              version,
                              memory_order_relaxed);
    }
    Py_XDECREF(name);
    return self;
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
    PyObject *name;
    int own = count_is_own(op, &name);
    if (own < 0) {
        return -1;
    }
    if (!own) {
        PyObject *zero = number == NULL ? PyLong_FromLong(0) : NULL;
        if (number == NULL && zero == NULL) {
            Py_DECREF(name);
            return -1;
        }
        int err = set_redefined_count(op, name, number ? number : zero);
        Py_XDECREF(zero);
        return err;
    }
    if (number != NULL &&
        int64_from_object(number, "Counter() argument 'number'", &value) < 0) {
        return -1;
    }
    counter_set(op, value);
    return 0;
}

/* An exact Counter, not yet tracked, from the spares when there are any.
 * The exact type has no items and cannot be abstract: this is what
 * object.__new__ would do, less the generic checks and the zeroing. */
static CounterObject *
counter_alloc(pyatexit_state *state, PyTypeObject *type)
{
#ifdef SPARE_COUNTERS
    if (state->spares > 0) {
        PyObject *op = state->spare[--state->spares];
        return CounterObject_CAST(PyObject_Init(op, type));
    }
#else
    (void)state;
#endif
    return PyObject_GC_New(CounterObject, type);
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
    /* After the Python code of __index__ and any wait to register: the
     * type (held by the caller) keeps its module, unless the collector
     * cleared both. */
    if (report_register() < 0) {
        return NULL;
    }
    pyatexit_state *state =
        module_state(heap_type_module((PyTypeObject *)type));
    if (state == NULL || state->Counter_Type == NULL) {
        return module_cleared();
    }
    CounterObject *self = counter_alloc(state, (PyTypeObject *)type);
    if (self == NULL) {
        return NULL;
    }
    self->count = value;
    /* Read only once __class__ is assigned a subclass without __dict__. */
    atomic_init(&self->own_count_version, 0);
#ifdef COUNTER_WEAKLIST_SLOT
    self->weakreflist = NULL;
#endif
    counter_attach_tally(self, state);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* Instances hold a reference to their heap type: the collector must see it
 * to free a cycle through the type and its module. */
static int
Counter_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    return 0;
}

/* Keeps a freed Counter of the exact type for the next Counter(n), while
 * its module state holds that type; 0 if not, or if there is no room. */
static int
counter_keep_spare(PyTypeObject *tp, PyObject *op)
{
#ifdef SPARE_COUNTERS
    pyatexit_state *state = module_state(heap_type_module(tp));
    if (state != NULL && state->Counter_Type == tp &&
        state->spares < SPARE_COUNTERS) {
        state->spare[state->spares++] = op;
        return 1;
    }
#else
    (void)tp;
    (void)op;
#endif
    return 0;
}

static void
Counter_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    PyObject_ClearWeakRefs(op); /* callbacks run, but cannot reach op */
#ifdef TALLY_PER_INTERPRETER
    tally_drop(CounterObject_CAST(op)->tally);
#endif
    if (!counter_keep_spare(tp, op)) {
        tp->tp_free(op);
    }
    Py_DECREF(tp);
}

static PyObject *
Counter_repr(PyObject *op)
{
    PyObject *name;
    int own = count_is_own(op, &name);
    if (own < 0) {
        return NULL;
    }
    if (own) {
        return PyUnicode_FromFormat(
            "%s(%lld)", Py_TYPE(op)->tp_name, (long long)counter_get(op));
    }
    PyObject *count = PyObject_GetAttr(op, name);
    Py_DECREF(name);
    if (count == NULL) {
        return NULL;
    }
    PyObject *repr =
        PyUnicode_FromFormat("%s(%R)", Py_TYPE(op)->tp_name, count);
    Py_DECREF(count);
    return repr;
}

/* object's own __class__, which Counter's is: and an instance whose class
 * is assigned looks again at whether its class leaves count to Counter
 * (see count_known_own()).  A class that it leaves and comes back to keeps
 * its version tag, though its __dict__ may have taken a count meanwhile. */
static PyObject *
Counter_get_class(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef((PyObject *)Py_TYPE(op));
}

static int
Counter_set_class(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    for (PyGetSetDef *gs = PyBaseObject_Type.tp_getset; gs->name; gs++) {
        if (strcmp(gs->name, "__class__") == 0) {
            int err = gs->set(op, value, gs->closure);
            atomic_store_explicit(&CounterObject_CAST(op)->own_count_version,
                                  0,
                                  memory_order_relaxed);
            return err;
        }
    }
    PyErr_SetString(PyExc_TypeError, "__class__ cannot be assigned");
    return -1;
}

/* ---------------------------------------------------------------------- */
/* Counting: inc() and dec()                                              */

#if defined(TALLY_PER_INTERPRETER) && !PY310_PLUS
/* A Counter that Counter_new() did not make (see TALLY_OF): registers the
 * report and takes its tally, or NULL with an exception. */
static tally *
counter_attach_late(CounterObject *self)
{
    if (report_register() < 0) {
        return NULL;
    }
    pyatexit_state *state = counter_type_state(Py_TYPE(self));
    if (state == NULL) {
        return NULL;
    }
    counter_attach_tally(self, state);
    return self->tally;
}
#endif

/* `self.count += 1` (or -= 1) through the attribute protocol, as the
 * Python class does (see count_redefined_in()); 0 or -1. */
static int
step_redefined_count(PyObject *op, PyObject *name, int up)
{
    PyObject *count = PyObject_GetAttr(op, name);
    if (count == NULL) {
        Py_DECREF(name);
        return -1;
    }
    PyObject *one = PyLong_FromLong(1);
    PyObject *next = one == NULL ? NULL
                     : up        ? PyNumber_InPlaceAdd(count, one)
                                 : PyNumber_InPlaceSubtract(count, one);
    Py_XDECREF(one);
    Py_DECREF(count);
    if (next == NULL) {
        Py_DECREF(name);
        return -1;
    }
    int err = set_redefined_count(op, name, next);
    Py_DECREF(next);
    return err;
}

/* inc() and dec(): one step of count and, when counting, of the tally.  The
 * tally is found first, so that a failure leaves count unchanged. */
static inline PyObject *
counter_step_own(PyObject *op, int up)
{
    CounterObject *self = CounterObject_CAST(op);
    tally *t = TALLY_OF(self);
    if (TALLY_MISSING(t)) {
        return NULL;
    }
    int at_limit;
    Py_BEGIN_CRITICAL_SECTION(op);
    at_limit = self->count == (up ? INT64_MAX : INT64_MIN);
    if (!at_limit) {
        self->count += up ? 1 : -1;
    }
    Py_END_CRITICAL_SECTION();
    if (at_limit) {
        PyErr_SetString(PyExc_OverflowError,
                        up ? "Counter.inc(): count would exceed 2**63-1"
                           : "Counter.dec(): count would go below -2**63");
        return NULL;
    }
    tally_step(t, up);
    Py_RETURN_NONE;
}

/* An instance whose class may have changed since count was last found to
 * be Counter's own (see count_known_own()).  Out of line, so that a
 * Counter's own step needs no stack frame. */
#ifdef __GNUC__
__attribute__((noinline))
#endif
static PyObject *
counter_step_subclass(PyObject *op, int up)
{
    PyObject *name;
    int own = count_is_own_slow(op, &name);
    if (own < 0) {
        return NULL;
    }
    if (own) {
        return counter_step_own(op, up);
    }
    tally *t = TALLY_OF(CounterObject_CAST(op));
    if (TALLY_MISSING(t)) {
        Py_DECREF(name);
        return NULL;
    }
    if (step_redefined_count(op, name, up) < 0) {
        return NULL;
    }
    tally_step(t, up);
    Py_RETURN_NONE;
}

static inline PyObject *
counter_step(PyObject *op, int up)
{
    return count_known_own(op) ? counter_step_own(op, up)
                               : counter_step_subclass(op, up);
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
    return counter_step(op, 1);
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
    return counter_step(op, 0);
}

/* ---------------------------------------------------------------------- */
/* Copy and pickle                                                        */

/* Looks up a special method as CPython does for pickle
 * (_PyObject_LookupSpecial): in the dicts along the type's MRO, never on
 * the instance or through __getattr__, bound to op by its __get__.  1 and a
 * new reference, 0 and NULL if missing, -1 with an exception. */
static int
special_method(PyObject *op, const char *name, PyObject **result)
{
    *result = NULL;
    PyObject *key = PyUnicode_InternFromString(name);
    if (key == NULL) {
        return -1;
    }
    /* Held: a key's __eq__ in a look-up can replace __class__ or bases.
     * Free-threaded CPython changes both with the world stopped, so a read
     * and an incref with no call between them are safe. */
    PyObject *type = Py_NewRef((PyObject *)Py_TYPE(op));
    PyObject *mro = Py_XNewRef(((PyTypeObject *)type)->tp_mro);
    PyObject *found = NULL;
    for (Py_ssize_t i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
#if PY312_PLUS
        PyObject *dict = PyType_GetDict(base);
#else
        PyObject *dict = Py_XNewRef(base->tp_dict);
#endif
        /* A strong reference: another thread may rebind the attribute. */
        int got = dict != NULL ? PyDict_GetItemRef(dict, key, &found) : 0;
        Py_XDECREF(dict);
        if (got != 0) {
            break;
        }
    }
    descrgetfunc get = found ? Py_TYPE(found)->tp_descr_get : NULL;
    if (get != NULL) {
        Py_SETREF(found, get(found, op, type));
    }
    Py_DECREF(key);
    Py_DECREF(type);
    Py_XDECREF(mro);
    *result = found;
    return found != NULL ? 1 : PyErr_Occurred() ? -1 : 0;
}

/* The arguments for cls.__new__ when copying or unpickling, from
 * __getnewargs_ex__ or __getnewargs__, found as pickle finds them. */
static int
counter_newargs(PyObject *op, PyObject **args, PyObject **kwargs)
{
    *args = *kwargs = NULL;
    PyObject *getnewargs;
    int found = special_method(op, "__getnewargs_ex__", &getnewargs);
    if (found < 0) {
        return -1;
    }
    if (found) {
        PyObject *pair = PyObject_CallNoArgs(getnewargs);
        Py_DECREF(getnewargs);
        if (pair == NULL) {
            return -1;
        }
        /* CPython's checks and messages (_PyObject_GetNewArguments). */
        if (!PyTuple_Check(pair)) {
            PyErr_Format(PyExc_TypeError,
                         "__getnewargs_ex__ should return a tuple, "
                         "not '%.200s'",
                         Py_TYPE(pair)->tp_name);
        }
        else if (PyTuple_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_ValueError,
                         "__getnewargs_ex__ should return a tuple of "
                         "length 2, not %zd",
                         PyTuple_GET_SIZE(pair));
        }
        else if (!PyTuple_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_Format(PyExc_TypeError,
                         "first item of the tuple returned by "
                         "__getnewargs_ex__ must be a tuple, not '%.200s'",
                         Py_TYPE(PyTuple_GET_ITEM(pair, 0))->tp_name);
        }
        else if (!PyDict_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_Format(PyExc_TypeError,
                         "second item of the tuple returned by "
                         "__getnewargs_ex__ must be a dict, not '%.200s'",
                         Py_TYPE(PyTuple_GET_ITEM(pair, 1))->tp_name);
        }
        else {
            *args = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
            *kwargs = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
        }
        Py_DECREF(pair);
        return *args != NULL ? 0 : -1;
    }
    found = special_method(op, "__getnewargs__", &getnewargs);
    if (found < 0) {
        return -1;
    }
    if (found) {
        *args = PyObject_CallNoArgs(getnewargs);
        Py_DECREF(getnewargs);
        if (*args == NULL) {
            return -1;
        }
        if (!PyTuple_Check(*args)) {
            PyErr_Format(PyExc_TypeError,
                         "__getnewargs__ should return a tuple, not '%.200s'",
                         Py_TYPE(*args)->tp_name);
            Py_CLEAR(*args);
            return -1;
        }
    }
    else {
        *args = PyTuple_New(0);
        if (*args == NULL) {
            return -1;
        }
    }
    *kwargs = PyDict_New();
    if (*kwargs == NULL) {
        Py_CLEAR(*args);
        return -1;
    }
    return 0;
}

#if !PY311_PLUS
/* What _PyType_GetSlotNames() does from 3.11 on: the names of the slots
 * of cls, a list or None, with the same checks and messages. */
static PyObject *
type_slot_names(PyTypeObject *cls)
{
    PyObject *key = PyUnicode_InternFromString("__slotnames__");
    if (key == NULL) {
        return NULL;
    }
    /* The look-up can run a key's __eq__; the result is held at once. */
    PyObject *names;
    int found = PyDict_GetItemRef(cls->tp_dict, key, &names);
    Py_DECREF(key);
    if (found < 0) {
        return NULL;
    }
    if (found == 0) {
        PyObject *copyreg = PyImport_ImportModule("copyreg");
        if (copyreg == NULL) {
            return NULL;
        }
        names =
            PyObject_CallMethod(copyreg, "_slotnames", "O", (PyObject *)cls);
        Py_DECREF(copyreg);
        if (names != NULL && names != Py_None && !PyList_Check(names)) {
            PyErr_SetString(PyExc_TypeError,
                            "copyreg._slotnames didn't return a list or None");
            Py_CLEAR(names);
        }
    }
    else if (names != Py_None && !PyList_Check(names)) {
        PyErr_Format(PyExc_TypeError,
                     "%.200s.__slotnames__ should be a list or None, "
                     "not %.200s",
                     cls->tp_name,
                     Py_TYPE(names)->tp_name);
        Py_CLEAR(names);
    }
    return names;
}

/* The values of the slots named in names that are set, into slots.  Each
 * look-up can run Python code that changes the list (it belongs to the
 * class): each name is held while it is used, and a change of size is an
 * error, as in CPython. */
static int
slot_values(PyObject *op, PyObject *names, PyObject *slots)
{
    Py_ssize_t size = PyList_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *name = PyList_GetItemRef(names, i);
        if (name == NULL) {
            return -1;
        }
        PyObject *value = PyObject_GetAttr(op, name);
        int err = 0;
        if (value != NULL) {
            err = PyDict_SetItem(slots, name, value);
            Py_DECREF(value);
        }
        else if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear(); /* an empty slot is left out */
        }
        else {
            err = -1;
        }
        Py_DECREF(name);
        if (err < 0) {
            return -1;
        }
        if (size != PyList_GET_SIZE(names)) {
            PyErr_SetString(PyExc_RuntimeError,
                            "__slotsname__ changed size during iteration");
            return -1;
        }
    }
    return 0;
}
#endif

/* What object.__getstate__() gives from 3.11 on: the __dict__ (None if
 * empty) and, if any are set, the values of __slots__ as (dict, slots).
 * 3.9 and 3.10 follow CPython 3.11's object_getstate_default(). */
static PyObject *
object_default_state(PyObject *op)
{
#if PY311_PLUS
    return PyObject_CallMethod(
        (PyObject *)&PyBaseObject_Type, "__getstate__", "O", op);
#else
    PyObject *state = NULL, *names = NULL, *slots = NULL;
    PyObject *dict = Py_TYPE(op)->tp_dictoffset != 0
                         ? PyObject_GenericGetDict(op, NULL)
                         : Py_NewRef(Py_None);
    if (dict == NULL) {
        return NULL;
    }
    if (dict != Py_None && PyDict_GET_SIZE(dict) == 0) {
        Py_SETREF(dict, Py_NewRef(Py_None));
    }
    names = type_slot_names(Py_TYPE(op));
    if (names == NULL) {
        goto done;
    }
    if (names == Py_None || PyList_GET_SIZE(names) == 0) {
        state = Py_NewRef(dict);
        goto done;
    }
    slots = PyDict_New();
    if (slots == NULL || slot_values(op, names, slots) < 0) {
        goto done;
    }
    state = PyDict_GET_SIZE(slots) > 0 ? PyTuple_Pack(2, dict, slots)
                                       : Py_NewRef(dict);
done:
    Py_DECREF(dict);
    Py_XDECREF(names);
    Py_XDECREF(slots);
    return state;
#endif
}

PyDoc_STRVAR(Counter___getstate____doc__,
             "__getstate__($self, /)\n"
             "--\n"
             "\n"
             "Return the state, as for an instance of the Python class: the\n"
             "instance attributes with count among them, and the values of\n"
             "any __slots__ of a subclass as (attributes, slots).");

static PyObject *
Counter___getstate__(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    /* First, so that a count taken in from __dict__ is not in it twice. */
    PyObject *redefined;
    if (count_is_own(op, &redefined) < 0) {
        return NULL;
    }
    PyObject *state = object_default_state(op);
    if (state == NULL) {
        Py_XDECREF(redefined);
        return NULL;
    }
    PyObject *slots = NULL, *attrs = state;
    if (PyTuple_Check(state) && PyTuple_GET_SIZE(state) == 2) {
        attrs = PyTuple_GET_ITEM(state, 0);
        slots = PyTuple_GET_ITEM(state, 1);
    }
    /* A copy: object.__getstate__() may give the __dict__ itself.  count
     * is added, unless the class redefines it: then it is an attribute
     * like the others, in the state if the instance has one. */
    PyObject *with_count =
        PyDict_Check(attrs) ? PyDict_Copy(attrs) : PyDict_New();
    PyObject *count = PyLong_FromLongLong(counter_get(op));
    PyObject *result = NULL;
    if (with_count != NULL && count != NULL &&
        (redefined != NULL ||
         PyDict_SetItemString(with_count, "count", count) == 0)) {
        result = slots == NULL ? Py_NewRef(with_count)
                               : PyTuple_Pack(2, with_count, slots);
    }
    Py_XDECREF(with_count);
    Py_XDECREF(redefined);
    Py_XDECREF(count);
    Py_DECREF(state);
    return result;
}

PyDoc_STRVAR(
    Counter___setstate____doc__,
    "__setstate__($self, state, /)\n"
    "--\n"
    "\n"
    "Restore a state from __getstate__: count is set directly (not\n"
    "through __setattr__), the other attributes go into __dict__ and\n"
    "slot values are set with setattr(), as pickle does.");

/* Calls set(op, key, value, arg) for each item of dict, from a snapshot of
 * its items (taken under the dict's lock on free-threaded builds): what set
 * runs (a key's __hash__, a __setattr__, another thread) can change or
 * empty dict, but not the snapshot, an immutable tuple of (key, value)
 * tuples that holds every key and value until the end. */
static int
for_each_item(PyObject *dict,
              PyObject *op,
              int (*set)(PyObject *, PyObject *, PyObject *, PyObject **),
              PyObject **arg)
{
    /* A tuple of the items: a list can be found (gc.get_objects()) and
     * changed by other code, a tuple cannot.  PyList_AsTuple() reads the
     * list under its lock on free-threaded builds. */
    PyObject *list = PyDict_Items(dict);
    if (list == NULL) {
        return -1;
    }
    PyObject *items = PyList_AsTuple(list);
    Py_DECREF(list);
    if (items == NULL) {
        return -1;
    }
    int err = 0;
    for (Py_ssize_t i = 0; err == 0 && i < PyTuple_GET_SIZE(items); i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_RuntimeError,
                            "Counter state changed while it was restored");
            err = -1;
        }
        else {
            err = set(
                op, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1), arg);
        }
    }
    Py_DECREF(items);
    return err;
}

/* An attribute of the state: count is set directly, anything else goes into
 * __dict__ (looked up once, into *dict), as pickle does for a Python
 * class. */
static int
setstate_attr(PyObject *op, PyObject *key, PyObject *value, PyObject **dict)
{
    if (PyUnicode_Check(key) &&
        PyUnicode_CompareWithASCIIString(key, "count") == 0) {
        PyObject *redefined;
        int own = count_is_own(op, &redefined);
        if (own != 0) {
            return own < 0 ? -1 : Counter_set_count(op, value, NULL);
        }
        Py_DECREF(redefined);
    }
    if (*dict == NULL &&
        (*dict = PyObject_GetAttrString(op, "__dict__")) == NULL) {
        return -1;
    }
    return PyObject_SetItem(*dict, key, value);
}

static int
setstate_slot(PyObject *op,
              PyObject *key,
              PyObject *value,
              PyObject **Py_UNUSED(unused))
{
    return PyObject_SetAttr(op, key, value);
}

static PyObject *
Counter___setstate__(PyObject *op, PyObject *state)
{
    PyObject *attrs = state, *slots = Py_None;
    if (PyTuple_Check(state) && PyTuple_GET_SIZE(state) == 2) {
        attrs = PyTuple_GET_ITEM(state, 0);
        slots = PyTuple_GET_ITEM(state, 1);
    }
    if ((attrs != Py_None && !PyDict_Check(attrs)) ||
        (slots != Py_None && !PyDict_Check(slots))) {
        PyErr_Format(PyExc_TypeError,
                     "Counter state must be a dict or a pair of dicts, "
                     "not %.200s",
                     Py_TYPE(state)->tp_name);
        return NULL;
    }
    /* Held for the whole call, whatever the items set run. */
    Py_INCREF(attrs);
    Py_INCREF(slots);
    PyObject *dict = NULL;
    int err = 0;
    if (attrs != Py_None) {
        err = for_each_item(attrs, op, setstate_attr, &dict);
    }
    if (err == 0 && slots != Py_None) {
        err = for_each_item(slots, op, setstate_slot, NULL);
    }
    Py_XDECREF(dict);
    Py_DECREF(attrs);
    Py_DECREF(slots);
    if (err < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(
    Counter___reduce____doc__,
    "__reduce__($self, /)\n"
    "--\n"
    "\n"
    "Support pickle and copy.\n"
    "\n"
    "A Counter is rebuilt as Counter(count).  An instance of a subclass\n"
    "is rebuilt as for a Python class, by cls.__new__ with the arguments\n"
    "of __getnewargs_ex__ or __getnewargs__, then given the state of\n"
    "__getstate__; count is carried along even where a subclass's\n"
    "__getstate__ leaves it out.");

/* The _rebuild that pickle finds by name: that of the pyatexit module in
 * sys.modules under module's name, which is a newer one if pyatexit was
 * imported again (any module's _rebuild takes any Counter class), else
 * module's own. */
static PyObject *
module_rebuild(PyObject *module)
{
    /* The name it is imported by, not its __name__, which code can change. */
    PyObject *name = PyUnicode_FromString(pyatexit_module.m_name);
    if (name == NULL) {
        return NULL;
    }
    PyObject *current = PyImport_GetModule(name);
    Py_DECREF(name);
    if (current == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (current == NULL || !PyModule_Check(current) ||
        PyModule_GetDef(current) != &pyatexit_module ||
        PyModule_GetState(current) == NULL) {
        Py_XSETREF(current, Py_NewRef(module));
    }
    PyObject *rebuild = PyObject_GetAttrString(current, "_rebuild");
    Py_DECREF(current);
    return rebuild;
}

/* How a Counter is rebuilt by copy and pickle with protocol: as the Python
 * class is by object.__reduce_ex__(), with count carried along.  Below
 * protocol 2 (copyreg._reduce_ex), a subclass instance is made without
 * calling its own __new__, and a false state is left out. */
static PyObject *
counter_reduce(PyObject *op, long protocol)
{
    /* Held: the Python code below can reassign op.__class__. */
    PyObject *type = Py_NewRef((PyObject *)Py_TYPE(op));
    PyObject *module = counter_module(Py_TYPE(op));
    if (module == NULL) {
        Py_DECREF(type);
        return NULL;
    }
    Py_INCREF(module);
    const pyatexit_state *st = PyModule_GetState(module);
    PyObject *rebuild = NULL, *args = NULL, *kwargs = NULL, *state = NULL;
    PyObject *count = NULL, *result = NULL;
    if (type == (PyObject *)st->Counter_Type) {
        result = Py_BuildValue("O(L)", type, (long long)counter_get(op));
        goto done;
    }
    /* count is read last, after the subclass's own code has run. */
    if ((rebuild = module_rebuild(module)) == NULL ||
        (protocol >= 2 && counter_newargs(op, &args, &kwargs) < 0) ||
        (state = PyObject_CallMethod(op, "__getstate__", NULL)) == NULL ||
        (count = PyLong_FromLongLong(counter_get(op))) == NULL) {
        goto done;
    }
    if (protocol >= 2) {
        result = Py_BuildValue(
            "O(OOOO)O", rebuild, type, count, args, kwargs, state);
        goto done;
    }
    int keep_state = PyObject_IsTrue(state);
    if (keep_state > 0) {
        result = Py_BuildValue("O(OO)O", rebuild, type, count, state);
    }
    else if (keep_state == 0) {
        result = Py_BuildValue("O(OO)", rebuild, type, count);
    }
done:
    Py_DECREF(type);
    Py_DECREF(module);
    Py_XDECREF(rebuild);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    Py_XDECREF(state);
    Py_XDECREF(count);
    return result;
}

static PyObject *
Counter___reduce__(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return counter_reduce(op, 2);
}

PyDoc_STRVAR(Counter___reduce_ex____doc__,
             "__reduce_ex__($self, protocol, /)\n"
             "--\n"
             "\n"
             "Support pickle and copy with protocol, as object.__reduce_ex__\n"
             "does: a __reduce__ of a subclass is used, and below protocol 2\n"
             "a subclass instance is rebuilt without calling its __new__.");

/* What object.__reduce_ex__() does: __reduce__ where a subclass overrides
 * it (looked up on the instance, the override seen on the type). */
static PyObject *
Counter___reduce_ex__(PyObject *op, PyObject *protocol_arg)
{
    long protocol = PyLong_AsLong(protocol_arg);
    if (protocol == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *type = Py_NewRef((PyObject *)Py_TYPE(op));
    pyatexit_state *st = counter_type_state((PyTypeObject *)type);
    PyObject *own = st == NULL
                        ? NULL
                        : PyObject_GetAttrString((PyObject *)st->Counter_Type,
                                                 "__reduce__");
    PyObject *found =
        own == NULL ? NULL : PyObject_GetAttrString(type, "__reduce__");
    PyObject *result = NULL;
    if (found != NULL && found != own) {
        PyObject *reduce = PyObject_GetAttrString(op, "__reduce__");
        if (reduce != NULL) {
            result = PyObject_CallNoArgs(reduce);
            Py_DECREF(reduce);
        }
    }
    else if (found != NULL) {
        result = counter_reduce(op, protocol);
    }
    Py_XDECREF(found);
    Py_XDECREF(own);
    Py_DECREF(type);
    return result;
}

/* ---------------------------------------------------------------------- */
/* The Counter type                                                       */

static PyMethodDef Counter_methods[] = {
    {"inc", Counter_inc, METH_NOARGS, Counter_inc__doc__},
    {"dec", Counter_dec, METH_NOARGS, Counter_dec__doc__},
    {"__reduce__", Counter___reduce__, METH_NOARGS, Counter___reduce____doc__},
    {"__reduce_ex__",
     Counter___reduce_ex__,
     METH_O,
     Counter___reduce_ex____doc__},
    {"__getstate__",
     Counter___getstate__,
     METH_NOARGS,
     Counter___getstate____doc__},
    {"__setstate__",
     Counter___setstate__,
     METH_O,
     Counter___setstate____doc__},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Counter_getset[] = {
    {"count",
     Counter_get_count,
     Counter_set_count,
     "The counter's value, an int from -2**63 to 2**63-1.",
     NULL},
    {"__class__",
     Counter_get_class,
     Counter_set_class,
     "The class of the instance, as object.__class__.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#ifdef COUNTER_WEAKLIST_SLOT
static PyMemberDef Counter_members[] = {
    {"__weaklistoffset__",
     T_PYSSIZET,
     offsetof(CounterObject, weakreflist),
     READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};
#endif

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
    {Py_tp_traverse, Counter_traverse},
    {Py_tp_dealloc, Counter_dealloc},
    {Py_tp_repr, Counter_repr},
    {Py_tp_methods, Counter_methods},
    {Py_tp_getset, Counter_getset},
#ifdef COUNTER_WEAKLIST_SLOT
    {Py_tp_members, Counter_members},
#endif
    {0, NULL},
};

static PyType_Spec Counter_Type_spec = {
    .name = "pyatexit.Counter",
    .basicsize = sizeof(CounterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | COUNTER_WEAKREF_FLAG,
    .slots = Counter_Type_slots,
};

/* ---------------------------------------------------------------------- */
/* Module functions                                                       */

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
    uint64_t inc, dec;
    tally_totals(&inc, &dec);
    PyObject *counts = PyTuple_New(2);
    if (counts == NULL) {
        return NULL;
    }
    PyObject *n = PyLong_FromUnsignedLongLong(inc);
    if (n == NULL) {
        Py_DECREF(counts);
        return NULL;
    }
    PyTuple_SET_ITEM(counts, 0, n);
    n = PyLong_FromUnsignedLongLong(dec);
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

/* cls.__new__(cls, *args, **kwargs), for _rebuild(). */
static PyObject *
call_new_of(PyObject *cls, PyObject *newargs, PyObject *kwargs)
{
    PyObject *obj = NULL;
    PyObject *new = PyObject_GetAttrString(cls, "__new__");
    if (new == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(newargs);
    PyObject *call_args = PyTuple_New(n + 1);
    if (call_args == NULL) {
        Py_DECREF(new);
        return NULL;
    }
    PyTuple_SET_ITEM(call_args, 0, Py_NewRef(cls));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(
            call_args, i + 1, Py_NewRef(PyTuple_GET_ITEM(newargs, i)));
    }
    /* A copy, as **kwargs makes: the dict may be one that other code (or,
     * free-threaded, another thread) changes while the call reads it. */
    PyObject *call_kwargs = PyDict_Copy(kwargs);
    if (call_kwargs != NULL) {
        obj = PyObject_Call(new, call_args, call_kwargs);
        Py_DECREF(call_kwargs);
    }
    Py_DECREF(new);
    Py_DECREF(call_args);
    return obj;
}

PyDoc_STRVAR(
    pyatexit__rebuild__doc__,
    "_rebuild($module, cls, count, args=None, kwargs=None, /)\n"
    "--\n"
    "\n"
    "Rebuild a Counter subclass instance for pickle and copy:\n"
    "cls.__new__(cls, *args, **kwargs) with count set.  Without args\n"
    "and kwargs (pickle protocols 0 and 1), the instance is made as\n"
    "copyreg._reconstructor makes one, without calling cls.__new__.");

static PyObject *
pyatexit__rebuild(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "_rebuild() takes 2 or 4 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    PyObject *cls = args[0];
    PyObject *newargs = nargs == 4 ? args[2] : Py_None;
    PyObject *kwargs = nargs == 4 ? args[3] : Py_None;
    /* A Counter class of any pyatexit module: one pickled before pyatexit
     * was imported again is rebuilt by the new module's _rebuild. */
    if (!PyType_Check(cls)) {
        PyErr_Format(PyExc_TypeError,
                     "_rebuild() argument 1 must be a subclass of Counter, "
                     "not %.200s",
                     Py_TYPE(cls)->tp_name);
        return NULL;
    }
    int call_new = newargs != Py_None || kwargs != Py_None;
    if (call_new && (!PyTuple_Check(newargs) || !PyDict_Check(kwargs))) {
        PyErr_SetString(PyExc_TypeError,
                        "_rebuild() arguments 3 and 4 must be a tuple and a "
                        "dict, or both None");
        return NULL;
    }
    /* As cls.__new__(cls, *args, **kwargs) would check. */
    if (call_new && !PyArg_ValidateKeywordArguments(kwargs)) {
        return NULL;
    }
    int64_t count;
    if (int64_from_object(args[1], "count", &count) < 0) {
        return NULL;
    }
    /* The state is NULL in a module object that was made but never
     * executed. */
    const pyatexit_state *state = PyModule_GetState(module);
    if (state == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "pyatexit module used before it was executed");
        return NULL;
    }
    if (state->Counter_Type == NULL) {
        return module_cleared();
    }
    if (counter_base((PyTypeObject *)cls) == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "_rebuild() argument 1 must be a subclass of Counter, "
                     "not %R",
                     cls);
        return NULL;
    }
    /* cls (held by the caller) holds its module, whatever __new__ does. */
    PyObject *obj = call_new ? call_new_of(cls, newargs, kwargs)
                             : Counter_new((PyTypeObject *)cls, NULL, NULL);
    if (obj != NULL && counter_base(Py_TYPE(obj)) == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "%R.__new__ returned %.200s, not a Counter",
                     cls,
                     Py_TYPE(obj)->tp_name);
        Py_CLEAR(obj);
    }
    if (obj != NULL) {
        counter_set(obj, count);
    }
    return obj;
}

static PyMethodDef pyatexit_methods[] = {
    {"inc_dec_counts",
     pyatexit_inc_dec_counts,
     METH_NOARGS,
     pyatexit_inc_dec_counts__doc__},
    {"_rebuild",
     (PyCFunction)(void (*)(void))pyatexit__rebuild,
     METH_FASTCALL,
     pyatexit__rebuild__doc__},
    {NULL, NULL, 0, NULL},
};

/* ---------------------------------------------------------------------- */
/* Module                                                                 */

static int
pyatexit_exec(PyObject *module)
{
    pyatexit_state *state = PyModule_GetState(module);
    if (instrument_module(state) < 0) {
        return -1;
    }
    state->Counter_Type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &Counter_Type_spec, NULL);
    if (state->Counter_Type == NULL) {
        return -1;
    }
#if PY310_PLUS
    /* Only where the type is immutable, so that the fast path can never
     * bypass a replaced __new__ or __init__. */
    state->Counter_Type->tp_vectorcall = Counter_vectorcall;
#else
    (void)Counter_vectorcall;
#endif
    state->count_descr =
        PyObject_GetAttrString((PyObject *)state->Counter_Type, "count");
    if (state->count_descr == NULL) {
        return -1;
    }
    if (PyModule_AddType(module, state->Counter_Type) < 0) {
        return -1;
    }
    return PyObject_SetAttrString(
        module, "COUNT_ALL_DEC_INC", BUILT_WITH_COUNTING);
}

static int
pyatexit_traverse(PyObject *module, visitproc visit, void *arg)
{
    pyatexit_state *state = PyModule_GetState(module);
    Py_VISIT(state->Counter_Type);
    Py_VISIT(state->count_descr);
    return 0;
}

static int
pyatexit_clear(PyObject *module)
{
    pyatexit_state *state = PyModule_GetState(module);
#ifdef SPARE_COUNTERS
    /* Before the type goes: freeing a spare reads its type. */
    while (state->spares > 0) {
        PyObject_GC_Del(state->spare[--state->spares]);
    }
#endif
    Py_CLEAR(state->count_descr);
    Py_CLEAR(state->Counter_Type);
    return 0;
}

static void
pyatexit_free(void *module)
{
    (void)pyatexit_clear((PyObject *)module);
    uninstrument_module(PyModule_GetState((PyObject *)module));
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
