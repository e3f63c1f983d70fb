"""Files in and out: atomic writes (a crash or a full disk never leaves a half-written genotype, plans file, picture or
checkpoint behind; the previous version stays until the new one is complete, with its permissions), and reads of
files a user hands us as data, never as code (JSON without NaN, torch files with ``weights_only=True``), each with
one error naming the file and what was expected."""

import json
import math
import os
import stat
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from nnunet_nas.errors import InputFileError, MissingFileError

TMP_MARK = ".tmp-nnunet-nas-"

# fault injection for the kill tests: called with the temporary path after it is complete and before the rename
before_replace: Optional[Callable[[str], None]] = None


def temporary_files(path: str) -> list:
    """Temporary files :func:`atomic_path` leaves beside ``path`` only when its process is killed mid-write."""
    folder, base = os.path.split(os.path.abspath(path))
    prefix = f".{base}{TMP_MARK}"
    return [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(prefix)] if os.path.isdir(folder) \
        else []


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a fresh temporary path beside ``path`` (hidden, unique); on success it replaces ``path``
    (``os.replace``) with the permissions ``path`` had (a new file gets the umask's), on error it is removed and
    ``path`` is left as it was."""
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}{TMP_MARK}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(path):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: str, what: str, expect: type = dict) -> Any:
    """The JSON value in ``path``; one :class:`InputFileError` naming the file for a missing file, a folder,
    non-UTF-8 bytes, invalid JSON, NaN / Infinity (not JSON), or a top-level value that is not an ``expect``."""
    if not os.path.exists(path):
        raise MissingFileError(f"{path}: no such file (expected {what}).")
    if not os.path.isfile(path):
        raise InputFileError(f"{path} is a folder, not a file (expected {what}).")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f, parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise InputFileError(f"{path}: not UTF-8 text (byte {e.start}); expected {what} as JSON.") from None
    except ValueError as e:
        raise InputFileError(f"{path}: not valid JSON ({e}); expected {what}.") from None
    if not isinstance(value, expect):
        raise InputFileError(f"{path}: expected {what} (a JSON {'object' if expect is dict else expect.__name__}), "
                             f"found a JSON {type(value).__name__}.")
    return value


def check_finite_json(value: Any, where: str) -> None:
    """Raise ``ValueError`` naming the path of the first NaN or infinity in a JSON-like value (strict readers refuse
    them; ``json.dumps`` would write ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}, not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite_json(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite_json(v, f"{where}[{i}]")


def _safe_globals() -> list:
    """The plain types nnU-Net's and our checkpoints hold besides tensors: numpy arrays and scalars (RNG states,
    logged values), ``torch.device`` (``init_args``)."""
    import numpy as np
    import torch
    allowed = [np.ndarray, np.dtype, torch.device]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    # files pickled under numpy 1 name numpy.core, under numpy 2 numpy._core: allow both names
    allowed += [_reconstruct, scalar, (_reconstruct, "numpy.core.multiarray._reconstruct"),
                (scalar, "numpy.core.multiarray.scalar"), (_reconstruct, "numpy._core.multiarray._reconstruct"),
                (scalar, "numpy._core.multiarray.scalar")]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                            "uint8", "uint32", "uint64", "bool")]
    return allowed


def load_torch_file(path: str, what: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and the plain types of :func:`_safe_globals`, never arbitrary
    objects unpickled from a file a user passed. One :class:`InputFileError` naming the file for a missing file, a
    folder, a file that is no torch file, or one that holds other objects."""
    import torch
    if not os.path.exists(path):
        raise MissingFileError(f"{path}: no such file (expected {what}).")
    if not os.path.isfile(path):
        raise InputFileError(f"{path} is a folder, not a file (expected {what}).")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same to the user
        message = str(e)
        if "allowed global" in message or "Unsupported global" in message:
            raise InputFileError(f"{path} holds Python objects other than tensors and plain data, which nnunet_nas "
                                 f"does not unpickle (it would run code from the file); expected {what}.") from None
        raise InputFileError(f"{path} cannot be read as a torch file (it is no torch.save or pickle file, or it is "
                             f"truncated); expected {what}.") from None
