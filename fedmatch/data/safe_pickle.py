"""Read pickles that may only rebuild numpy arrays, so a crafted file cannot run code.

``pickle.load`` calls whatever global a file names (``os.system``, ``builtins.eval``, ...).
:class:`ArrayUnpickler` resolves only the few globals that numpy arrays, dtypes and scalars
pickle to (under both the ``numpy.core`` spelling of numpy 1 and ``numpy._core`` of numpy 2,
and the ``_codecs.encode`` / ``bytes`` helpers that Python 3 writes into protocol 0-2
pickles) and refuses every other one, naming the file and the ``module.name`` it asked for.
Those globals are only callable the way numpy and Python call them, so a file cannot make
the reader allocate memory it does not hold (``ndarray(huge_shape)``, ``bytes(10**12)``).
Tuples, lists, dicts, numbers and strings need no global, so ``(images, labels)`` pairs load.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["ArrayUnpickler", "UnsafePickleError", "load_array_pickle"]


class UnsafePickleError(ValueError):
    """A pickle names a global that rebuilding numpy arrays never needs."""


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes for protocols 0-2 as _codecs.encode(str, "latin1"); any other
    # codec is refused so the global cannot reach codecs that do more than re-encode text.
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise UnsafePickleError(
            f"_codecs.encode is allowed only on text with encoding 'latin1', got "
            f"{type(text).__name__} with encoding {encoding!r}"
        )
    return text.encode("latin1", errors)


# Taken from numpy's own reduce results so they are the functions this numpy pickles with,
# whichever module (numpy.core or numpy._core) defines them.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` in a pickle.

    numpy's own pickles only pass the class to ``_reconstruct``; a file that calls it,
    ``ndarray((10**6, 10**6))``, would make the reader allocate whatever the file asks for
    without holding the data.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(
            f"refusing to call numpy.ndarray{args!r}: numpy's pickles never call it, and a "
            "call allocates any size the file names"
        )


_NDARRAY = _NdarrayClass()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles every array as _reconstruct(ndarray, (0,), 'b') and then sets its state
    # from data the file holds; any other shape would allocate memory the file never fills.
    if subtype is not _NDARRAY or shape != (0,):
        raise UnsafePickleError(
            f"refusing numpy _reconstruct({subtype!r}, {shape!r}, ...): numpy's pickles only "
            "ever rebuild an empty numpy.ndarray there"
        )
    return _RECONSTRUCT(np.ndarray, shape, dtype)


def _empty_bytes(*args: Any) -> bytes:
    # Python 3 pickles b"" (protocols 0-2) as bytes(); bytes(n) would allocate n bytes.
    if args:
        raise UnsafePickleError(
            f"refusing builtins.bytes{args!r}: only bytes() (an empty value) is ever pickled"
        )
    return b""


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _SCALAR
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _FROMBUFFER


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler whose files may only name the globals numpy arrays need."""

    def __init__(self, file: IO[bytes], source: Path | str, *, encoding: str = "latin1") -> None:
        # latin1 decodes the byte strings of Python 2 era pickles (FedBN's files) losslessly,
        # which numpy needs to rebuild their arrays; it does not change Python 3 pickles.
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles name Python 2's modules (__builtin__.eval): translate them as
        # pickle itself does, so the allowlist and the error speak of the module that loads.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle global {module}.{name}: only numpy arrays, "
                "dtypes and scalars (in tuples, lists and dicts) may be stored in this file"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle persistent id {pid!r}: only numpy arrays may "
            "be stored in this file"
        )


def load_array_pickle(file: IO[bytes], source: Path | str) -> Any:
    """Unpickle ``file`` (named ``source`` in errors), rebuilding only numpy arrays."""
    try:
        return ArrayUnpickler(file, source).load()
    except UnsafePickleError as error:
        if str(source) in str(error):
            raise
        raise UnsafePickleError(f"{source}: {error}") from None
