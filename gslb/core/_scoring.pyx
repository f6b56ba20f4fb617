# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled region scoring kernel; ``gslb._scoring_py`` is the readable reference.

Both modules must return bit-identical answers, so every floating-point expression here is
evaluated in the same order as in the twin (``(net + wait) + penalty``, ``load / capacity``)
and every "least" keeps the first (lowest index) region on ties. The docstring of
``gslb/_scoring_py.py`` states the decision procedure.

``decide`` reuses per-kernel scratch arrays and never calls back into Python while using
them, so it is safe under the GIL but a Kernel must not be shared across threads of a
free-threaded interpreter.
"""

from cpython.array cimport array
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_CheckExact
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact
from cpython.long cimport PyLong_FromSsize_t
from cpython.object cimport Py_SIZE
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdlib cimport free, malloc
from libc.string cimport memmove

# The reason codes as C constants. Their names (``REASONS``) live only in the twin; the
# Python-visible codes below are these very values, which tests/test_scoring.py holds equal
# to the twin's codes, one by one.
cdef enum:
    R_NO_REGION = 0
    R_LOCAL = 1
    R_FAILOVER = 2
    R_SPILL = 3
    R_LOCAL_QUEUED = 4
    R_STANDBY = 5

NO_REGION = R_NO_REGION
LOCAL = R_LOCAL
FAILOVER = R_FAILOVER
SPILL = R_SPILL
LOCAL_QUEUED = R_LOCAL_QUEUED
STANDBY = R_STANDBY

# SHA-256 of the .pyx text this module was compiled from, a compile-time constant that
# setup.py passes to cythonize. gslb.scoring refuses the module when the .pyx beside it has
# other text (a stale in-place build).
SOURCE_SHA256 = GSLB_PYX_SHA256

cdef struct _Entry:
    double key
    Py_ssize_t index

cdef tuple _NO_REGION_RESULT = (R_NO_REGION, (), -1)


cdef inline double _wait(double load, double capacity, double service_ms) noexcept nogil:
    # Same as Python's max(0.0, x): 0.0 unless x > 0.0.
    cdef double x = load + 1.0 - capacity
    if not (x > 0.0):
        x = 0.0
    return x / capacity * service_ms


cdef inline const unsigned char *_fast_bytes(object obj, Py_ssize_t *size) noexcept:
    """Pointer into an exact bytes/bytearray; size -1 when ``obj`` is neither."""
    if PyBytes_CheckExact(obj):
        size[0] = Py_SIZE(obj)
        return <const unsigned char *> PyBytes_AS_STRING(obj)
    if PyByteArray_CheckExact(obj):
        size[0] = Py_SIZE(obj)
        return <const unsigned char *> PyByteArray_AS_STRING(obj)
    size[0] = -1
    return NULL


cdef inline const double *_fast_doubles(object obj, Py_ssize_t *size) noexcept:
    """Pointer into an exact array('d'); size -1 otherwise."""
    cdef array arr
    if type(obj) is array:
        arr = <array> obj
        if arr.ob_descr.typecode == b'd':
            size[0] = Py_SIZE(arr)
            return arr.data.as_doubles
    size[0] = -1
    return NULL


def wait_ms(double load, double capacity, double service_ms):
    """Modeled queueing delay for one more request at a region with ``load`` in flight."""
    if capacity == 0.0:
        raise ZeroDivisionError("float division by zero")
    return _wait(load, capacity, service_ms)


cdef class Kernel:
    """Scores the regions of one fleet; built once at config-load time."""

    cdef Py_ssize_t _n
    cdef unsigned char *_active
    cdef double *_capacity
    cdef double *_service_ms
    cdef double _spill_util
    cdef double _spill_penalty_ms
    # scratch for the fallback sort
    cdef _Entry *_scratch

    def __cinit__(self, active, capacity, service_ms, double spill_utilization,
                  double spill_penalty_ms):
        cdef Py_ssize_t n = len(active)
        cdef Py_ssize_t i
        cdef Py_ssize_t alloc
        cdef double c, s
        if len(capacity) != n or len(service_ms) != n:
            raise ValueError(
                f"active, capacity and service_ms must have the same length "
                f"(got {n}, {len(capacity)}, {len(service_ms)})"
            )
        alloc = n if n > 0 else 1
        self._n = n
        self._active = <unsigned char *> malloc(alloc * sizeof(unsigned char))
        self._capacity = <double *> malloc(alloc * sizeof(double))
        self._service_ms = <double *> malloc(alloc * sizeof(double))
        self._scratch = <_Entry *> malloc(alloc * sizeof(_Entry))
        if (self._active == NULL or self._capacity == NULL or self._service_ms == NULL
                or self._scratch == NULL):
            raise MemoryError()
        for i in range(n):
            c = float(capacity[i])
            s = float(service_ms[i])
            if not (c > 0.0):
                raise ValueError(f"capacity[{i}] must be > 0, got {c!r}")
            if not (s > 0.0):
                raise ValueError(f"service_ms[{i}] must be > 0, got {s!r}")
            self._active[i] = 1 if active[i] else 0
            self._capacity[i] = c
            self._service_ms[i] = s
        self._spill_util = spill_utilization
        self._spill_penalty_ms = spill_penalty_ms

    def __dealloc__(self):
        free(self._active)
        free(self._capacity)
        free(self._service_ms)
        free(self._scratch)

    @property
    def n(self):
        """Number of regions."""
        return self._n

    def set_service_ms(self, Py_ssize_t index, double value):
        """Replace one region's per-request service time (e.g. from observed latency)."""
        if not (0 <= index < self._n):
            raise IndexError(f"region index {index} out of range for {self._n} regions")
        if not (value > 0.0):
            raise ValueError(f"service_ms must be > 0, got {value!r}")
        self._service_ms[index] = value

    def decide(self, allowed, routable, net_ms, load, double budget_ms, Py_ssize_t limit=0):
        """Return ``(reason, order, home)``: ``order[0]`` is the choice, the rest are
        fallbacks; ``home`` is the nearest routable active allowed region (the one a spill
        leaves; the chosen standby region when none is active), -1 with no region.

        ``limit`` > 0 keeps only the first ``limit`` entries of ``order`` (the request path
        needs no more candidates than it may attempt); 0 keeps them all.
        """
        # Borrow raw pointers. Exact bytes / bytearray / array('d') are read directly (no
        # buffer acquisition); anything else goes through a typed memoryview kept alive
        # in these locals. Nothing below calls back into Python while the pointers are in
        # use, so the buffers cannot be resized under us.
        cdef const unsigned char[::1] allowed_mv, routable_mv
        cdef const double[::1] net_mv, load_mv
        cdef Py_ssize_t n_allowed, n_routable, n_net, n_load
        cdef const unsigned char *allowed_p = _fast_bytes(allowed, &n_allowed)
        cdef const unsigned char *routable_p = _fast_bytes(routable, &n_routable)
        cdef const double *net_p = _fast_doubles(net_ms, &n_net)
        cdef const double *load_p = _fast_doubles(load, &n_load)
        if n_allowed < 0:
            allowed_mv = allowed
            n_allowed = allowed_mv.shape[0]
            if n_allowed > 0:
                allowed_p = &allowed_mv[0]
        if n_routable < 0:
            routable_mv = routable
            n_routable = routable_mv.shape[0]
            if n_routable > 0:
                routable_p = &routable_mv[0]
        if n_net < 0:
            net_mv = net_ms
            n_net = net_mv.shape[0]
            if n_net > 0:
                net_p = &net_mv[0]
        if n_load < 0:
            load_mv = load
            n_load = load_mv.shape[0]
            if n_load > 0:
                load_p = &load_mv[0]
        return self._decide(allowed_p, n_allowed, routable_p, n_routable, net_p, n_net,
                            load_p, n_load, budget_ms, limit)

    cdef object _decide(self, const unsigned char *allowed, Py_ssize_t n_allowed,
                        const unsigned char *routable, Py_ssize_t n_routable,
                        const double *net_ms, Py_ssize_t n_net,
                        const double *load, Py_ssize_t n_load, double budget_ms,
                        Py_ssize_t limit):
        cdef Py_ssize_t n = self._n
        cdef const unsigned char *active = self._active
        cdef const double *cap = self._capacity
        cdef const double *svc = self._service_ms
        cdef Py_ssize_t i, m, chosen, home = -1, nearest = -1, best = -1
        cdef bint any_allowed = False, pick_standby = False
        cdef int reason
        cdef double c, key, best_key = 0.0, spill_util, penalty
        cdef Py_ssize_t ii
        cdef object order, item

        if n_allowed != n or n_routable != n or n_net != n or n_load != n:
            raise ValueError(
                f"expected {n} regions, got allowed={n_allowed} routable={n_routable} "
                f"net_ms={n_net} load={n_load}"
            )

        # One pass: nearest active region of A, and home = nearest active routable one.
        for i in range(n):
            if not allowed[i]:
                continue
            any_allowed = True
            if active[i]:
                if nearest < 0 or net_ms[i] < net_ms[nearest]:
                    nearest = i
                if routable[i] and (home < 0 or net_ms[i] < net_ms[home]):
                    home = i
        if not any_allowed:
            return _NO_REGION_RESULT

        if home < 0:
            # No active region is routable: nearest routable standby region of A.
            for i in range(n):
                if allowed[i] and routable[i] and not active[i]:
                    if home < 0 or net_ms[i] < net_ms[home]:
                        home = i
            if home < 0:
                return _NO_REGION_RESULT
            chosen = home
            reason = R_STANDBY
            pick_standby = True
        else:
            spill_util = self._spill_util
            if load[home] / cap[home] < spill_util:
                chosen = home
                reason = R_LOCAL if home == nearest else R_FAILOVER
            else:
                chosen = home
                reason = R_LOCAL_QUEUED
                penalty = self._spill_penalty_ms
                for i in range(n):
                    if (i == home or not allowed[i] or not active[i] or not routable[i]
                            or not (load[i] / cap[i] < spill_util)):
                        continue
                    c = net_ms[i] + _wait(load[i], cap[i], svc[i])
                    if not (c <= budget_ms):
                        continue
                    key = c + penalty
                    if best < 0 or key < best_key:
                        best = i
                        best_key = key
                if best >= 0 and best_key < net_ms[home] + _wait(load[home], cap[home],
                                                                 svc[home]):
                    chosen = best
                    reason = R_SPILL

        # Fallbacks: the rest of the candidate set by cost; stable insertion sort.
        cdef _Entry *fb = self._scratch
        cdef Py_ssize_t lo, hi, mid
        # Keep at most `cap_fb` fallbacks: a bounded insertion sort drops the worst.
        cdef Py_ssize_t cap_fb = n if limit <= 0 else limit - 1
        m = 0
        if cap_fb <= 0:
            n = 0  # the choice alone: skip the fallback scan
        for i in range(n):
            if i == chosen or not allowed[i] or not routable[i]:
                continue
            if (active[i] != 0) == pick_standby:
                continue
            key = net_ms[i] + _wait(load[i], cap[i], svc[i])
            if m == cap_fb:
                if not (key < fb[m - 1].key):
                    continue  # no better than the worst kept (ties keep the earlier index)
                m -= 1  # the worst kept entry falls off the end
            # Insert after every entry whose key is <= this one (stable). A linear scan
            # mispredicts less than a binary search while the list is short.
            if m <= 48:
                lo = m
                while lo > 0 and key < fb[lo - 1].key:
                    fb[lo] = fb[lo - 1]
                    lo -= 1
            else:
                lo = 0
                hi = m
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if key < fb[mid].key:
                        hi = mid
                    else:
                        lo = mid + 1
                if lo < m:
                    memmove(&fb[lo + 1], &fb[lo], <size_t> (m - lo) * sizeof(_Entry))
            fb[lo].key = key
            fb[lo].index = i
            m += 1

        order = PyTuple_New(m + 1)
        item = PyLong_FromSsize_t(chosen)
        Py_INCREF(item)
        PyTuple_SET_ITEM(order, 0, item)
        for ii in range(m):
            item = PyLong_FromSsize_t(fb[ii].index)
            Py_INCREF(item)
            PyTuple_SET_ITEM(order, ii + 1, item)
        return (reason, order, home)
