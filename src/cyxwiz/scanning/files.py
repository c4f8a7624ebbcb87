"""One verdict per model file, whatever its format, read through a seekable stream."""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any

from cyxwiz.scanning.onnx_check import FileRefused, check_onnx_bytes
from cyxwiz.scanning.pickles import MAX_FINDINGS, PickleScan, looks_like_pickle, scan_pickle_stream

SCANNER = "cyxwiz-scan/1"  # bump when a verdict of an unchanged file could change
STATUSES = ("clean", "suspicious", "dangerous", "not_applicable")
# Files that are pickles by convention: a file of these kinds that is not a pickle is reported.
STRICT_PICKLE = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".dill", ".sav")
# Extensions that may or may not hold a pickle (torch's pytorch_model.bin is one; raw weights
# are not): scanned when the bytes parse as a pickle, "not applicable" otherwise.
MAYBE_PICKLE = (".bin", ".model", ".mar", ".data", ".dat", ".pkl.gz")
CODE = (".py", ".pyc", ".pyo", ".sh", ".bash", ".ipynb", ".js", ".so", ".dll", ".dylib",
        ".exe", ".bat", ".cmd", ".ps1", ".jar", ".wasm")  # fmt: skip
MAY_EMBED_CODE = (".h5", ".hdf5", ".keras", ".pb", ".savedmodel", ".mlmodel", ".llamafile")
TEXT = (".json", ".txt", ".md", ".yaml", ".yml", ".csv", ".tsv", ".cfg", ".ini", ".toml",
        ".vocab", ".merges", ".jinja", ".license", ".rst")  # fmt: skip
MAX_ZIP_MEMBERS = 10_000
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
MAX_NUMPY_HEADER = 1024 * 1024
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True)
class Verdict:
    """A file's scan result: ``status`` is one of STATUSES; ``findings`` explain it."""

    status: str
    format: str
    findings: list[dict[str, Any]] = field(default_factory=list)
    scanner: str = SCANNER

    def dangerous_imports(self) -> list[str]:
        return [
            (f"{f['member']}: " if f.get("member") else "") + f["import"]
            for f in self.findings
            if f.get("severity") == "dangerous" and "import" in f
        ]


def _ext(path: str) -> str:
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(".pkl.gz"):
        return ".pkl.gz"
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


def _pickle_findings(scan: PickleScan, member: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for (module, name), severity in sorted(scan.imports.items()):
        if severity == "safe":
            continue
        item: dict[str, Any] = {
            "severity": severity,
            "kind": "import",
            "import": f"{module}.{name}",
            "detail": (
                "unpickling calls this: it can run arbitrary code"
                if severity == "dangerous"
                else "a class or function the scanner does not know to be harmless"
            ),
        }
        if member:
            item["member"] = member
        out.append(item)
    for problem in scan.problems:
        item = {"severity": "suspicious", "kind": "problem", "detail": problem}
        if member:
            item["member"] = member
        out.append(item)
    return out


def _finish(fmt: str, findings: list[dict[str, Any]], clean: str = "clean") -> Verdict:
    order = {"dangerous": 0, "suspicious": 1}
    findings.sort(key=lambda f: order.get(f.get("severity", ""), 2))
    status = clean
    if any(f.get("severity") == "dangerous" for f in findings):
        status = "dangerous"
    elif any(f.get("severity") == "suspicious" for f in findings):
        status = "suspicious"
    if len(findings) > MAX_FINDINGS:
        more = len(findings) - MAX_FINDINGS
        findings = [
            *findings[:MAX_FINDINGS],
            {"severity": "info", "kind": "truncated", "detail": f"{more} more findings"},
        ]
    return Verdict(status=status, format=fmt, findings=findings)


def _problem(detail: str, member: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"severity": "suspicious", "kind": "problem", "detail": detail}
    if member:
        item["member"] = member
    return item


def _numpy(f: IO[bytes], member: str | None) -> tuple[str, list[dict[str, Any]]]:
    head = f.read(10)
    if len(head) < 10 or not head.startswith(b"\x93NUMPY"):
        return "numpy", [_problem("not a valid .npy file", member)]
    major = head[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", head[8:10])
    else:
        (hlen,) = struct.unpack("<I", head[8:10] + f.read(2))
    if hlen > MAX_NUMPY_HEADER:
        return "numpy", [_problem("the .npy header is too large", member)]
    header = f.read(hlen)
    if b"'O'" in header or b"|O" in header or b'"O"' in header:
        scan = scan_pickle_stream(f, expect_pickle=True)
        assert scan is not None
        return "numpy", _pickle_findings(scan, member)
    return "numpy", []


def _zip(f: IO[bytes], path: str) -> Verdict:
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return _finish("zip", [_problem(f"unreadable zip archive: {exc}")])
    findings: list[dict[str, Any]] = []
    fmt = "zip"
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            findings.append(_problem(f"more than {MAX_ZIP_MEMBERS} members; not all checked"))
            infos = infos[:MAX_ZIP_MEMBERS]
        for info in infos:
            if info.is_dir():
                continue
            name = info.filename
            low = name.lower()
            if low.endswith("data.pkl") or low.endswith("/constants.pkl"):
                fmt = "pytorch-zip"
            if low.endswith(".py") or "/code/" in low:
                findings.append(
                    _problem("the archive holds code (TorchScript or Python source)", name)
                )
                continue
            try:
                with archive.open(info) as member:
                    if low.endswith(".npy"):
                        findings.extend(_numpy(member, name)[1])
                        continue
                    strict = low.endswith((".pkl", ".pickle"))
                    head = member.read(2)
                    if not strict and not looks_like_pickle(head):
                        continue
                with archive.open(info) as member:
                    scan = scan_pickle_stream(member, expect_pickle=strict)
                if scan is not None:
                    findings.extend(_pickle_findings(scan, name))
            except (zipfile.BadZipFile, RuntimeError, OSError, ValueError, EOFError) as exc:
                findings.append(_problem(f"unreadable member: {exc}", name))
    return _finish(fmt, findings)


def _safetensors(f: IO[bytes], size: int) -> Verdict:
    head = f.read(8)
    if len(head) < 8:
        return _finish("safetensors", [_problem("not a valid safetensors file (too short)")])
    (hlen,) = struct.unpack("<Q", head)
    if hlen > MAX_SAFETENSORS_HEADER or 8 + hlen > size:
        return _finish("safetensors", [_problem("not a valid safetensors file (header size)")])
    try:
        header = json.loads(f.read(hlen))
        data = size - 8 - hlen
        ok = isinstance(header, dict) and all(
            k == "__metadata__"
            or (
                isinstance(v, dict)
                and isinstance(v.get("dtype"), str)
                and isinstance(v.get("shape"), list)
                and isinstance(v.get("data_offsets"), list)
                and len(v["data_offsets"]) == 2
                and all(isinstance(o, int) and 0 <= o <= data for o in v["data_offsets"])
            )
            for k, v in header.items()
        )
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        return _finish("safetensors", [_problem("not a valid safetensors file (header)")])
    return _finish("safetensors", [])


def scan_file(path: str, f: IO[bytes], size: int, *, onnx_max_bytes: int) -> Verdict:
    """The verdict for the file ``path`` whose bytes ``f`` (seekable, at offset 0) holds.

    Never unpickles, imports or runs anything from the file. Raises FileRefused for an ONNX
    file that is not a valid, self-contained model (see ``check_onnx_bytes``)."""
    ext = _ext(path)
    head = f.read(8)
    f.seek(0)
    if ext == ".onnx":
        if size > onnx_max_bytes:
            raise FileRefused(
                f"{path}: ONNX files above {onnx_max_bytes} bytes are not accepted",
                code="onnx_too_large",
                path=path,
            )
        check_onnx_bytes(f.read(size), path=path)
        return Verdict(status="clean", format="onnx")
    if ext == ".safetensors":
        return _safetensors(f, size)
    if head.startswith(ZIP_MAGIC):
        return _zip(f, path)
    if ext == ".npy":
        fmt, findings = _numpy(f, None)
        return _finish(fmt, findings)
    if ext in STRICT_PICKLE or ext in MAYBE_PICKLE or looks_like_pickle(head):
        scan = scan_pickle_stream(f, expect_pickle=ext in STRICT_PICKLE)
        if scan is not None:
            return _finish("pickle", _pickle_findings(scan, None))
        if ext == ".pkl.gz":
            return _finish("pickle", [_problem("a compressed pickle cannot be checked")])
        return Verdict(status="not_applicable", format="binary")
    if ext in CODE:
        return _finish(
            "code",
            [_problem("executable code: it runs only if a user runs it; review it first")],
        )
    if ext in MAY_EMBED_CODE:
        return _finish(
            "may-embed-code",
            [_problem("this format can embed code (e.g. Keras Lambda layers); not analysed")],
        )
    if ext in TEXT:
        return Verdict(status="clean", format="text")
    return Verdict(status="not_applicable", format="binary")
