"""A pickle scanner that never unpickles: it walks the opcode stream and judges every import.

Unpickling runs code: ``GLOBAL``/``STACK_GLOBAL``/``INST`` import any callable and ``REDUCE``
calls it (``os.system``, ``builtins.eval``...). A pickle can only call what it imports, so the
imports decide the verdict: a denied import is *dangerous*, one on the allow list of plain data
types (containers, numpy arrays, torch tensors) is fine, anything else is *suspicious* (a
class of some library: ``sklearn`` estimators, which a user may still choose to trust).

Memory stays bounded whatever the file size: large byte/string arguments (a model's weights)
are skipped with ``seek`` (or read and dropped), only short strings are kept, only string memo
entries are remembered (up to a cap), and the opcode count is capped.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any

MAX_STRING = 64 * 1024  # longer string/bytes arguments are skipped, not read
MAX_LINE = 64 * 1024  # protocol-0 text arguments
MAX_MEMO_BYTES = 16 * 1024 * 1024  # string memo entries kept to resolve STACK_GLOBAL
MAX_OPS = 50_000_000  # per file; more makes the verdict "suspicious" (scan limit)
MAX_FINDINGS = 50
SKIP_PIECE = 1024 * 1024

# Any import from these modules (or their submodules) is dangerous.
DANGEROUS_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "sys", "socket", "shutil", "pty", "runpy",
        "importlib", "ctypes", "multiprocessing", "signal", "code", "codeop", "pdb", "bdb",
        "timeit", "platform", "pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal",
        "types", "operator", "_operator", "webbrowser", "http", "urllib", "urllib3", "requests",
        "httpx", "ftplib", "smtplib", "telnetlib", "asyncio", "threading", "_thread", "io",
        "_io", "tempfile", "pathlib", "sqlite3", "pydoc", "pkgutil", "zipimport", "imp",
        "site", "venv", "ensurepip", "distutils", "setuptools", "pip", "inspect", "ast",
        "commands", "popen2", "gc", "weakref", "zipfile", "tarfile",
        "glob", "fileinput", "linecache", "posixpath", "ntpath", "genericpath", "shelve",
        "dbm", "mmap", "resource", "select", "selectors", "ssl", "xmlrpc", "socketserver",
        "torch.hub", "torch.jit", "torch.serialization", "torch._C", "torch.ops",
        "torch._dynamo", "torch.utils.cpp_extension", "torch.package", "numpy.testing",
        "numpy.f2py", "numpy.ctypeslib", "numpy.distutils", "numpy.lib.npyio", "pandas.io",
        "keras", "tensorflow", "yaml", "jinja2", "IPython", "sklearn.utils._testing",
    }
)  # fmt: skip
# These names are dangerous whatever module they come from (getattr chains, eval-likes).
DANGEROUS_NAMES = frozenset(
    {
        "eval", "exec", "execfile", "compile", "open", "getattr", "setattr", "delattr",
        "__import__", "globals", "locals", "vars", "input", "breakpoint", "apply", "file",
        "reload", "system", "popen", "spawn", "load", "loads", "read_pickle", "run", "call",
        "check_output", "Popen", "runstring", "attrgetter", "methodcaller", "exit", "quit",
        "help", "memmap", "fromfile", "tofile", "save", "savetxt", "loadtxt", "genfromtxt",
    }
)  # fmt: skip
# Imports that only rebuild plain data.
SAFE_GLOBALS: dict[str, frozenset[str]] = {
    "builtins": frozenset(
        {
            "set",
            "frozenset",
            "list",
            "dict",
            "tuple",
            "int",
            "float",
            "complex",
            "bool",
            "bytes",
            "bytearray",
            "str",
            "slice",
            "range",
            "object",
        }
    ),
    "collections": frozenset({"OrderedDict", "defaultdict", "deque", "Counter"}),
    "copyreg": frozenset({"_reconstructor"}),
    "_codecs": frozenset({"encode"}),  # how protocols 0-2 write bytes
    "codecs": frozenset({"encode"}),
    "datetime": frozenset({"datetime", "date", "time", "timedelta", "timezone"}),
    "decimal": frozenset({"Decimal"}),
    "fractions": frozenset({"Fraction"}),
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
    "torch": frozenset(
        {
            "Size",
            "device",
            "dtype",
            "float32",
            "float64",
            "float16",
            "bfloat16",
            "int64",
            "int32",
            "int16",
            "int8",
            "uint8",
            "bool",
            "complex64",
            "complex128",
            "FloatStorage",
            "DoubleStorage",
            "HalfStorage",
            "BFloat16Storage",
            "LongStorage",
            "IntStorage",
            "ShortStorage",
            "CharStorage",
            "ByteStorage",
            "BoolStorage",
            "ComplexFloatStorage",
            "ComplexDoubleStorage",
            "QInt8Storage",
            "QUInt8Storage",
            "QInt32Storage",
            "QUInt4x2Storage",
            "QUInt2x4Storage",
            "UntypedStorage",
        }
    ),
    "torch._utils": frozenset(
        {
            "_rebuild_tensor",
            "_rebuild_tensor_v2",
            "_rebuild_parameter",
            "_rebuild_parameter_with_state",
            "_rebuild_qtensor",
            "_rebuild_sparse_tensor",
        }
    ),
    "torch._tensor": frozenset({"_rebuild_from_type_v2"}),
    "torch.nn.parameter": frozenset({"Parameter"}),
}

_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "UNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING",
     "SHORT_BINSTRING"}
)  # fmt: skip
_PUT_OPS = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_LENGTH_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, "<B"),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, "<i"),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, "<I"),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, "<Q"),
}
_CODE2OP = {op.code.encode("latin-1")[0]: op for op in pickletools.opcodes}
PICKLE_EXTENSIONS = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".bin", ".dill",
                     ".sav", ".npy", ".mar", ".model")  # fmt: skip


class _Malformed(Exception):
    pass


class _Big:
    """Stands for a string argument too long to keep."""


BIG = _Big()


def looks_like_pickle(head: bytes) -> bool:
    """Protocol 2+ pickles start with PROTO (0x80) and a protocol number 2-5."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def normalize(module: str, name: str) -> tuple[str, str]:
    """Apply the Python 2 name mapping the unpickler applies to protocol 0-2 imports."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return module, name


def classify(module: str, name: str) -> str:
    """'dangerous', 'suspicious' or 'safe' for the import ``module.name``."""
    module, name = normalize(module, name)
    parts = name.split(".")
    if "unknown" in (module, name) or not module or not name:
        return "dangerous"
    if any(p.startswith("__") or p in DANGEROUS_NAMES for p in parts):
        return "dangerous"
    full = f"{module}.{name}"
    if any(full == m or full.startswith(m + ".") for m in DANGEROUS_MODULES):
        return "dangerous"
    if name in SAFE_GLOBALS.get(module, ()):
        return "safe"
    return "suspicious"


@dataclass
class PickleScan:
    """The imports and problems found in one pickle-bearing file (or zip member)."""

    imports: dict[tuple[str, str], str] = field(default_factory=dict)  # -> severity
    problems: list[str] = field(default_factory=list)  # suspicious conditions
    pickles: int = 0  # complete pickle streams read
    ops: int = 0

    @property
    def severity(self) -> str:
        sev = set(self.imports.values())
        if "dangerous" in sev:
            return "dangerous"
        if "suspicious" in sev or self.problems:
            return "suspicious"
        return "clean"


class _Reader:
    """Reads opcodes' arguments from a stream, skipping long ones."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        try:
            self.seekable = bool(f.seekable())
        except (AttributeError, OSError):
            self.seekable = False
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        if len(data) != n:
            raise _Malformed(f"the stream ends inside an opcode at byte {self.pos}")
        return data

    def peek1(self) -> bytes:
        data = self.f.read(1)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> None:
        if self.seekable:
            self.f.seek(n, io.SEEK_CUR)
            self.pos += n
            return
        while n:
            self.read(min(n, SKIP_PIECE))
            n -= min(n, SKIP_PIECE)

    def line(self) -> bytes:
        out = bytearray()
        while True:
            c = self.f.read(1)
            self.pos += len(c)
            if not c:
                raise _Malformed("the stream ends inside a text argument")
            out += c
            if c == b"\n":
                return bytes(out)
            if len(out) > MAX_LINE:
                raise _Malformed("a text argument is longer than the scanner accepts")


def _argument(r: _Reader, op: pickletools.OpcodeInfo) -> Any:
    arg = op.arg
    if arg is None:
        return None
    if arg.n >= 0:
        return arg.reader(io.BytesIO(r.read(arg.n)))
    if arg.n == pickletools.UP_TO_NEWLINE:
        lines = 2 if arg.name == "stringnl_noescape_pair" else 1
        return arg.reader(io.BytesIO(b"".join(r.line() for _ in range(lines))))
    width, fmt = _LENGTH_PREFIX[arg.n]
    prefix = r.read(width)
    (length,) = struct.unpack(fmt, prefix)
    if length < 0:
        raise _Malformed(f"{op.name} has a negative length")
    if op.name in ("LONG1", "LONG4"):
        if length > MAX_STRING:
            r.skip(length)
            return 0
        return arg.reader(io.BytesIO(prefix + r.read(length)))
    if length > MAX_STRING:
        r.skip(length)
        return BIG
    return arg.reader(io.BytesIO(prefix + r.read(length)))


def _one_pickle(r: _Reader, scan: PickleScan, first_byte: bytes) -> None:
    """Walk one pickle stream up to STOP, recording its imports; _Malformed on bad input."""
    memo: dict[int, str] = {}
    memo_bytes = 0
    memo_next = 0
    saw_put = saw_memoize = mixed_memo = False
    recent: deque[tuple[str, Any]] = deque(maxlen=32)
    code = first_byte
    while True:
        if not code:
            raise _Malformed(f"the stream ends at byte {r.pos} without STOP")
        op = _CODE2OP.get(code[0])
        if op is None:
            raise _Malformed(f"unknown opcode {code!r} at byte {r.pos - 1}")
        scan.ops += 1
        if scan.ops > MAX_OPS:
            raise _Malformed(f"more than {MAX_OPS} opcodes (scan limit)")
        try:
            value = _argument(r, op)
        except _Malformed:
            raise
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            raise _Malformed(f"bad argument of {op.name} at byte {r.pos}: {exc}") from None
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(value).partition(" ")
            _record(scan, module, attr, checked=False)
        elif name == "STACK_GLOBAL":
            found: list[str] = []
            for prev, pval in reversed(recent):
                if prev in _PUT_OPS:
                    continue
                if prev in _STRING_OPS and isinstance(pval, str):
                    found.append(pval)
                elif prev in _GET_OPS and isinstance(pval, int) and not mixed_memo:
                    found.append(memo.get(pval, "unknown"))
                else:
                    found.append("unknown")
                if len(found) == 2:
                    break
            while len(found) < 2:
                found.append("unknown")
            _record(scan, found[1], found[0], checked="unknown" in found)
        elif name in ("EXT1", "EXT2", "EXT4"):
            scan.imports[("copyreg.extension", str(value))] = "suspicious"
        elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            # MEMOIZE stores at len(memo), PUT at its argument: a stream using both could make
            # indexes drift from the real unpickler's, so then no memo entry is trusted.
            if name == "MEMOIZE":
                saw_memoize, index = True, memo_next
                memo_next += 1
            else:
                saw_put, index = True, int(value)
            mixed_memo = saw_memoize and saw_put
            prev_op, prev_val = recent[-1] if recent else ("", None)
            if prev_op in _STRING_OPS and isinstance(prev_val, str):
                if memo_bytes + len(prev_val) <= MAX_MEMO_BYTES:
                    memo[index] = prev_val
                    memo_bytes += len(prev_val)
                else:
                    memo.pop(index, None)
            elif prev_op in _GET_OPS and isinstance(prev_val, int) and prev_val in memo:
                memo[index] = memo[prev_val]
            else:
                memo.pop(index, None)
        recent.append((name, value if not isinstance(value, bytes | bytearray) else None))
        if name == "STOP":
            scan.pickles += 1
            return
        code = r.peek1()


def _identifier_path(text: str) -> bool:
    return bool(text) and all(p.isidentifier() for p in text.split("."))


def _record(scan: PickleScan, module: str, name: str, *, checked: bool) -> None:
    """Note an import; an import of something that is not a dotted name fails in the real
    unpickler before anything runs, so it ends the stream as malformed instead."""
    if not checked and not (_identifier_path(module) and _identifier_path(name)):
        raise _Malformed(f"import of {module!r} {name!r} is not a dotted name")
    if len(scan.imports) >= 10_000 and (module, name) not in scan.imports:
        scan.problems.append("more than 10000 distinct imports")
        return
    scan.imports[(module, name)] = classify(module, name)


def scan_pickle_stream(f: IO[bytes], *, expect_pickle: bool) -> PickleScan | None:
    """Scan consecutive pickles in ``f`` (as ``torch.save``'s legacy format and repeated
    ``pickle.load`` calls read them) until the data stops being a pickle.

    Returns None if the stream does not start with a pickle at all and ``expect_pickle`` is
    false; with ``expect_pickle`` such a file is reported as a problem (a ``.pkl`` that is not
    a pickle cannot be checked)."""
    r = _Reader(f)
    scan = PickleScan()
    while True:
        first = r.peek1()
        if not first:
            break
        try:
            _one_pickle(r, scan, first)
        except _Malformed as exc:
            if scan.pickles == 0:
                if not scan.imports:
                    if not expect_pickle:
                        return None
                    scan.problems.append(f"the file is not a valid pickle stream ({exc})")
                elif any(m.startswith("joblib.") for m, _ in scan.imports):
                    # joblib writes numpy arrays' raw bytes inside the stream: the scanner
                    # cannot read past the first one
                    scan.problems.append(
                        f"joblib stream with raw array data: the rest was not checked ({exc})"
                    )
                else:
                    # an unpickler that reads past this point would run ops nobody checked
                    scan.imports[("unparseable", "stream")] = "dangerous"
                    scan.problems.append(f"malformed pickle: {exc}")
            # after a complete pickle, what follows may be raw data (legacy torch storages)
            if "scan limit" in str(exc):
                scan.problems.append(str(exc))
            break
    return scan
