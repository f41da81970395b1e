"""The ``.npz`` container under ``nanodl.save`` and ``Model.save``: atomic writes, checked reads.

It knows files, not models (so ``nn`` and ``callbacks`` import it without a cycle). No
pickle; a damaged file raises ``ValueError`` naming the fault. See docs/saving.md.

>>> import os, tempfile, numpy as np
>>> from nanodl import archive
>>> path = os.path.join(tempfile.mkdtemp(), 'state.npz')
>>> archive.save({'w': np.arange(3.0)}, path)
>>> with archive.Reader(path) as reader:
...     reader.shape('w'), reader.dtype('w')
((3,), dtype('float64'))
"""
import contextlib
import errno
import math
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from collections import namedtuple

import numpy as np

from . import nested
from .backend import to_host
from .tensor import Tensor

__all__ = ["save", "load", "Reader", "write_npz", "atomic_write"]

FORMAT_KEY = "__nanodl__"
ARCHITECTURE_KEY = "__architecture__"
TREE_KEY = "__tree__"         # a nested state's structure (nanodl.nested), JSON as uint8
OPTIMIZER_KEY = "__optimizer__"  # in a model file: the optimizer state's structure ...
OPTIMIZER_PREFIX = "optimizer/"  # ... and its arrays
WEIGHTS_PREFIX = "weights/"
FORMAT_VERSION = 1
TEMP_MARK = ".nanodl-tmp-"
MAX_INFLATION = 32            # a compressed member may grow at most this much ...
INFLATION_ALLOWANCE = 16 << 20  # ... beyond this many bytes
_ARRAY_KINDS = "biufcSU"      # bool, integers, floats, complex, bytes and str arrays

try:  # POSIX: a temporary file is locked while it is being written
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


# ---------------------------------------------------------------- writing
def _host_array(name, value):
    array = to_host(value.data if isinstance(value, Tensor) else value)
    if array.dtype.hasobject:
        raise TypeError(f"save: {name!r} is an object array; only numeric and string arrays "
                        "can be saved (no pickle)")
    return array


def write_npz(path, arrays):
    """Write ``arrays`` (name -> ndarray) as an uncompressed ``.npz``, atomically."""
    def write(handle):
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, array in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array, order="C"), allow_pickle=False)
    atomic_write(path, write)


def atomic_write(path, write):
    """Call ``write(handle)`` on a locked temporary file beside ``path``, fsync it and move it
    over ``path`` (every file nanodl writes goes through here). See docs/saving.md."""
    target = os.path.realpath(os.fspath(path))  # through a symlink: the link stays a link
    folder, base = os.path.split(target)
    _remove_stale_temporaries(folder, base)
    fd, temp_path = tempfile.mkstemp(dir=folder, prefix=f".{base}{TEMP_MARK}{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # "being written": not stale
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, _file_mode(target))
        os.replace(temp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):  # already gone: nothing to clean up
            os.remove(temp_path)
        raise
    _fsync_folder(folder)


def _remove_stale_temporaries(folder, base):
    """Delete temporaries whose pid is gone and whose lock is free (best effort)."""
    if os.name != "posix":
        return  # no reliable liveness test: leave the files
    prefix = f".{base}{TEMP_MARK}"
    try:
        names = [name for name in os.listdir(folder or ".") if name.startswith(prefix)]
    except OSError:
        return  # the folder cannot be listed: the save itself will say why
    for name in names:
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # vanished or not ours to open: leave it
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
            os.remove(path)
        except OSError:
            pass  # locked by a live writer (in another pid namespace) or already removed
        finally:
            os.close(fd)


def _process_exists(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, run by someone else
        pass
    return True


def _file_mode(path):
    """Keep an existing file's permissions; otherwise the usual 0666 minus the umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder):
    """Make the rename itself durable (best effort: not every platform can)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _checked_names(names, caller):
    """Refuse names that cannot be read back unambiguously (``x`` beside ``x.npy``)."""
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"{caller}: state dict names must be non-empty strings not starting "
                             f"with '__', got {name!r}")
    known = set(names)
    for name in names:
        if name.endswith(".npy") and name[:-4] in known:
            raise ValueError(f"{caller}: the names {name[:-4]!r} and {name!r} are ambiguous in an "
                             ".npz file (numpy reads both as the first); rename one")


def save(state_dict, path):
    """Write a state dict (name -> array, a nested dict, or a Module's ``state_dict()``)."""
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, dict):
        raise TypeError(f"save: expected a dict of name -> array, got {type(state_dict).__name__}")
    _checked_names(state_dict, "save")
    arrays = {FORMAT_KEY: np.array(f"nanodl.state_dict/{FORMAT_VERSION}")}
    if nested.is_nested(state_dict):
        arrays[TREE_KEY], leaves = nested.pack(state_dict, _host_array)
        arrays.update(leaves)
    else:
        arrays.update({name: _host_array(name, value) for name, value in state_dict.items()})
    write_npz(path, arrays)


# ---------------------------------------------------------------- reading
# What a damaged file can make zipfile, zlib, struct or numpy's header parser raise.
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, struct.error, NotImplementedError,
           RuntimeError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError,
           OverflowError, SyntaxError, RecursionError)
_EOCD = struct.Struct("<4sHHHHIIH")           # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")


_Member = namedtuple("_Member", "info shape dtype fortran header_size")


class Reader:
    """An opened, checked ``.npz`` (a context manager); ``read(name)`` fetches one array."""

    def __init__(self, path, caller="load"):
        self.path, self.caller = os.fspath(path), caller
        self._file = _open_regular(self.path, caller)
        try:
            self._zip, self._members = self._check()
        except _DAMAGE as error:
            self.close()
            raise self._damaged(error) from None
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
        self._file.close()

    @property
    def names(self):
        return list(self._members)

    def shape(self, name):
        return self._members[name].shape

    def dtype(self, name):
        return self._members[name].dtype

    def nbytes(self, name):
        member = self._members[name]
        return math.prod(member.shape) * member.dtype.itemsize

    def read(self, name):
        """The array stored as ``name`` (a fresh, writable host array)."""
        member = self._members[name]
        try:
            with self._zip.open(member.info) as stream:
                stream.read(member.header_size)
                size = self.nbytes(name)
                buffer = bytearray(size)
                view, done = memoryview(buffer), 0
                while done < size:
                    got = stream.readinto(view[done:])
                    if not got:
                        raise EOFError(f"member {name!r} ends after {done} of {size} bytes")
                    done += got
                if stream.read(1):  # also makes zipfile compare the CRC
                    raise ValueError(f"member {name!r} is longer than its header says")
        except _DAMAGE as error:
            raise self._damaged(error) from None
        if size == 0:
            return np.empty(member.shape, member.dtype)
        array = np.frombuffer(buffer, dtype=member.dtype)
        return array.reshape(member.shape, order="F" if member.fortran else "C")

    def read_all(self, names=None):
        return {name: self.read(name) for name in (self.names if names is None else names)}

    # ------------------------------------------------------------ checks
    def _damaged(self, error):
        detail = f"{type(error).__name__}: {error}" if not isinstance(error, ValueError) else str(error)
        return ValueError(f"{self.caller}: {self.path!r} is not a valid nanodl .npz file ({detail})")

    def _check(self):
        size = os.fstat(self._file.fileno()).st_size
        entries, directory_start, directory_size, end_start = _end_record(self._file, size)
        if directory_start + directory_size != end_start:
            raise ValueError(f"the central directory ({directory_size} bytes at {directory_start}) "
                             f"does not end where the end record starts ({end_start})")
        self._file.seek(0)
        archive = zipfile.ZipFile(self._file)
        try:
            infos = archive.infolist()
            if len(infos) != entries:
                raise ValueError(f"the end record counts {entries} members, the central directory "
                                 f"holds {len(infos)}")
            members = {}
            for info in infos:
                name, members[name] = self._member(archive, info, members)
            _check_no_overlap(infos, directory_start)
        except BaseException:
            archive.close()
            raise
        return archive, members

    @staticmethod
    def _member(archive, info, members):
        if not info.filename.endswith(".npy"):
            raise ValueError(f"member {info.filename!r} is not an .npy array")
        name = info.filename[:-4]
        if name in members:
            raise ValueError(f"member {info.filename!r} appears twice")
        if info.flag_bits & 0x1:
            raise ValueError(f"member {name!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise ValueError(f"stored member {name!r} claims {info.file_size} bytes in "
                                 f"{info.compress_size}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > INFLATION_ALLOWANCE + MAX_INFLATION * info.compress_size:
                raise ValueError(f"compressed member {name!r} would inflate {info.compress_size} "
                                 f"bytes to {info.file_size} (more than {MAX_INFLATION}x)")
        else:
            raise ValueError(f"member {name!r} uses compression method {info.compress_type} "
                             "(only stored and deflated members are read)")
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"member {name!r} is .npy version {version}")
            shape, fortran, dtype = getattr(np.lib.format, f"read_array_header_{version[0]}_0")(stream)
            header_size = stream.tell()
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.shape != ():
            raise ValueError(f"member {name!r} has dtype {dtype}; only plain numeric and string "
                             "arrays are read")
        shape, data_size = tuple(shape), math.prod(shape) * dtype.itemsize
        if header_size + data_size != info.file_size:
            raise ValueError(f"member {name!r} declares {dtype} {shape} ({data_size} bytes) "
                             f"but holds {info.file_size - header_size}")
        return name, _Member(info, shape, dtype, bool(fortran), header_size)


def _open_regular(path, caller):
    """A binary file object for ``path``, or ValueError when it is not a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{caller}: no such file", path) from None
    except IsADirectoryError:
        fd = None
    mode = stat.S_IFDIR if fd is None else os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        if fd is not None:
            os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, device or socket)"
        raise ValueError(f"{caller}: {path!r} is {kind}, not a saved .npz file")
    return os.fdopen(fd, "rb")


def _end_record(handle, size):
    """``(entries, directory offset, directory size, end record offset)``."""
    if size < _EOCD.size:
        raise ValueError(f"{size} bytes is too short for a zip archive")
    tail_size = min(size, _EOCD.size + 0xFFFF)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    position = tail.rfind(b"PK\x05\x06")
    while position >= 0:  # the real record's comment runs exactly to the end of the file
        record = _EOCD.unpack_from(tail, position)
        if position + _EOCD.size + record[7] == len(tail):
            break
        position = tail.rfind(b"PK\x05\x06", 0, position)
    else:
        raise ValueError("no end-of-central-directory record (truncated or not a zip file)")
    _, disk, directory_disk, disk_entries, entries, directory_size, directory_start, _ = record
    end_start = size - tail_size + position
    if 0xFFFF in (disk_entries, entries) or 0xFFFFFFFF in (directory_size, directory_start):
        locator_start = end_start - _ZIP64_LOCATOR.size
        if locator_start < 0:
            raise ValueError("zip64 end record locator missing")
        handle.seek(locator_start)
        signature, disk, end64_start, _ = _ZIP64_LOCATOR.unpack(handle.read(_ZIP64_LOCATOR.size))
        if signature != b"PK\x06\x07" or end64_start + _ZIP64_EOCD.size > locator_start:
            raise ValueError("zip64 end record locator damaged")
        handle.seek(end64_start)
        fields = _ZIP64_EOCD.unpack(handle.read(_ZIP64_EOCD.size))
        if fields[0] != b"PK\x06\x06":
            raise ValueError("zip64 end record damaged")
        disk, directory_disk, disk_entries, entries, directory_size, directory_start = fields[4:10]
        if end64_start + 12 + fields[1] != locator_start:
            raise ValueError("zip64 end record has a wrong size")
        end_start = end64_start
    if disk or directory_disk or disk_entries != entries:
        raise ValueError("multi-disk zip archives are not read")
    return entries, directory_start, directory_size, end_start


def _check_no_overlap(infos, directory_start):
    ordered = sorted(infos, key=lambda info: info.header_offset)
    for info, following in zip(ordered, ordered[1:] + [None]):
        end = info.header_offset + 30 + len(info.orig_filename.encode("utf-8")) + info.compress_size
        limit = directory_start if following is None else following.header_offset
        if end > limit:
            raise ValueError(f"member {info.filename!r} overlaps the next record")


def load(path):
    """The state dict in a file from ``nanodl.save``, ``Model.save`` (its weights) or ``np.savez``."""
    with Reader(path, "load") as reader:
        names = reader.names
        if ARCHITECTURE_KEY in names:
            return {name[len(WEIGHTS_PREFIX):]: reader.read(name) for name in names
                    if name.startswith(WEIGHTS_PREFIX)}
        arrays = {name: reader.read(name) for name in names if name != FORMAT_KEY}
        if TREE_KEY not in arrays:
            return arrays
        try:  # a nested state (nanodl.nested)
            return nested.unpack(arrays.pop(TREE_KEY), arrays)
        except ValueError as error:
            raise ValueError(f"load: {reader.path!r}: {error}") from None
