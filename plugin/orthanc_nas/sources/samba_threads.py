"""Per-thread state for Samba's client libraries (4.17 and older), registered through ctypes.

Samba 4.17 keeps the talloc stack frames every libsmbclient call pushes and pops in
one global variable unless a table of thread functions has been registered with
`smb_thread_set_functions` (libsamba-util). libsmbclient's own `smbc_thread_posix`,
which used to do that, is not exported by Debian 12's build, so without this module
two threads using two different contexts corrupt each other's frames and the
process aborts. Newer Samba keeps those frames in pthread keys by itself.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int, c_uint, c_void_p

# struct smb_thread_functions (lib/util/smb_threads.h): mutexes and thread-local storage
_CREATE = CFUNCTYPE(c_int, c_char_p, POINTER(c_void_p), c_char_p)  # create_mutex and create_tls
_DESTROY = CFUNCTYPE(None, c_void_p, c_char_p)
_LOCK = CFUNCTYPE(c_int, c_void_p, c_int, c_char_p)
_GET_TLS = CFUNCTYPE(c_void_p, c_void_p, c_char_p)


class _ThreadFunctions(ctypes.Structure):
    _fields_ = [("create_mutex", _CREATE), ("destroy_mutex", _DESTROY), ("lock_mutex", _LOCK),
                ("create_tls", _CREATE), ("destroy_tls", _DESTROY), ("set_tls", c_void_p), ("get_tls", c_void_p)]


_keep: list = []  # structures, callbacks and mutexes handed to the library: they must live forever


def install(boot: Callable[[], None]) -> bool:
    """Give Samba pthread mutexes and thread-local storage; True if its stack frames are now per thread.

    The hot path (get_tls/set_tls, at every talloc_tos()) must not call back into Python, which
    would take the GIL thousands of times per second: it goes straight to pthread_getspecific and
    pthread_setspecific, with the key number itself as Samba's opaque key handle (the extra
    `location` argument is ignored by the C calling convention). The rare calls -- creating a
    mutex or the key, locking the mutex of smb_thread_once -- are Python callbacks. Samba asks
    for its key only after a first get_tls on a not-yet-created (NULL) key, and key 0 may belong
    to someone else (CPython's thread state): during `boot()` a Python get_tls answers NULL for
    it, then the native table replaces it.
    """
    try:
        util = ctypes.CDLL("libsamba-util.so.0")
        set_functions = util.smb_thread_set_functions
    except (OSError, AttributeError):
        return True  # a Samba without the hook keeps its stack frames per thread by itself
    libc = ctypes.CDLL(None, use_errno=True)
    libc.pthread_mutex_init.argtypes = libc.pthread_mutex_lock.argtypes = [c_void_p]
    libc.pthread_mutex_unlock.argtypes = [c_void_p]
    libc.pthread_key_create.argtypes = [POINTER(c_uint), c_void_p]
    libc.pthread_getspecific.argtypes, libc.pthread_getspecific.restype = [c_uint], c_void_p
    keys: list[int] = []

    def create_mutex(_name, pplock, _location):
        mutex = ctypes.create_string_buffer(64)  # >= sizeof(pthread_mutex_t) on every Linux ABI
        libc.pthread_mutex_init(mutex, None)
        _keep.append(mutex)
        pplock[0] = ctypes.addressof(mutex)
        return 0

    def lock_mutex(plock, lock_type, _location):  # 1 = lock, 2 = unlock
        return libc.pthread_mutex_lock(plock) if lock_type == 1 else libc.pthread_mutex_unlock(plock)

    def create_tls(_name, ppkey, _location):
        key = c_uint()
        err = libc.pthread_key_create(ctypes.byref(key), None)
        if not err:
            keys.append(key.value)
            ppkey[0] = key.value
        return err

    def boot_get_tls(pkey, _location):
        return libc.pthread_getspecific(pkey) if keys else None

    def table(get_tls) -> _ThreadFunctions:
        t = _ThreadFunctions(_CREATE(create_mutex), _DESTROY(lambda *_: None), _LOCK(lock_mutex),
                             _CREATE(create_tls), _DESTROY(lambda *_: None),
                             ctypes.cast(libc.pthread_setspecific, c_void_p), get_tls)
        _keep.append(t)
        return t

    boot_get = _GET_TLS(boot_get_tls)
    _keep.append(boot_get)
    set_functions(ctypes.byref(table(ctypes.cast(boot_get, c_void_p))))
    boot()  # the library's first stack frame: Samba creates its key through create_tls
    set_functions(ctypes.byref(table(ctypes.cast(libc.pthread_getspecific, c_void_p))))
    return len(keys) == 1  # no key: Samba was used in this process before, its frames stay global
