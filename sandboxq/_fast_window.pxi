# SlidingWindow, the native half of the parent's mirror of a queue's rate
# limit window; inlined into _fast.pyx by Cython's include (one extension,
# one module: sandboxq._fast). Its twin is _fast_py.SlidingWindow.

cdef class SlidingWindow:
    """A ring of int64 start times, oldest first, sorted, at most max_jobs long
    (growing as needed up to that). Starts are dropped from the front once
    they leave the window, when the next call looks at the time."""

    cdef int64_t* _ring
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _head
    cdef Py_ssize_t _size
    cdef Py_ssize_t _max
    cdef int64_t _window
    cdef int64_t _latest

    def __cinit__(self):
        self._ring = NULL
        self._cap = self._head = self._size = 0
        self._latest = INT64_MIN

    def __init__(self, max_jobs, window_ms):
        self._max = _bounded("max_jobs", max_jobs, 1, INT64_LIMIT)
        self._window = _bounded("window_ms", window_ms, 1, INT64_LIMIT)

    def __dealloc__(self):
        PyMem_Free(self._ring)

    @property
    def max_jobs(self):
        return self._max

    @property
    def window_ms(self):
        return self._window

    def __len__(self):
        return self._size

    cdef inline Py_ssize_t _slot(self, Py_ssize_t i) noexcept:
        i += self._head
        return i - self._cap if i >= self._cap else i

    cdef inline bint _expired(self, int64_t t) noexcept:
        # t <= latest - window, without overflowing below INT64_MIN
        return self._latest >= INT64_MIN + self._window and t <= self._latest - self._window

    cdef inline void _advance(self, int64_t now) noexcept:
        if now > self._latest:
            self._latest = now
        while self._size and self._expired(self._ring[self._head]):
            self._head += 1
            if self._head == self._cap:
                self._head = 0
            self._size -= 1

    cdef int _reserve(self, Py_ssize_t need) except -1:
        """Room for ``need`` starts (need <= max_jobs), oldest at slot 0."""
        cdef Py_ssize_t cap, i
        cdef int64_t* ring
        if need <= self._cap:
            return 0
        cap = min(self._max, max(need, 2 * self._cap, 16))
        ring = <int64_t*>PyMem_Malloc(cap * sizeof(int64_t))
        if ring == NULL:
            raise MemoryError()
        for i in range(self._size):
            ring[i] = self._ring[self._slot(i)]
        PyMem_Free(self._ring)
        self._ring = ring
        self._cap = cap
        self._head = 0
        return 0

    def allowed(self, int64_t now_ms):
        self._advance(now_ms)
        return self._max - self._size

    def opens_at(self, int64_t now_ms):
        cdef int64_t oldest
        self._advance(now_ms)
        if self._size < self._max:
            return self._latest
        oldest = self._ring[self._head]
        if oldest > INT64_MAX - self._window:
            return (<object>oldest) + self._window
        return oldest + self._window

    def record(self, int64_t now_ms, count):
        cdef Py_ssize_t k, j
        cdef int64_t prev
        if count < 0:
            raise ValueError(f"count must be at least 0, got {count}")
        self._advance(now_ms)
        if count > self._max:
            k = self._max
        else:
            k = count
        if k == 0 or self._expired(now_ms):
            return
        while k:
            if self._size == self._max:
                if now_ms <= self._ring[self._head]:
                    return  # older than every start kept: it cannot matter
                self._head += 1
                if self._head == self._cap:
                    self._head = 0
                self._size -= 1
            elif self._size == self._cap:
                self._reserve(self._size + 1)
            # insert in order; at the end unless the clock stepped back
            j = self._size
            while j:
                prev = self._ring[self._slot(j - 1)]
                if prev <= now_ms:
                    break
                self._ring[self._slot(j)] = prev
                j -= 1
            self._ring[self._slot(j)] = now_ms
            self._size += 1
            k -= 1

    def sync(self, starts_ms):
        cdef list starts = sorted(starts_ms)
        cdef Py_ssize_t n = len(starts), first = n, keep, i
        cdef int64_t t
        while first and n - first < self._max:
            t = starts[first - 1]
            if self._expired(t):
                break
            first -= 1
        keep = n - first
        self._size = 0
        self._head = 0
        self._reserve(keep)
        for i in range(keep):
            self._ring[i] = starts[first + i]
        self._size = keep
