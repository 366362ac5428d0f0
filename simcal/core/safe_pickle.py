"""Reading plain pickles of weights (detectron2's model-zoo ``.pkl``) without running their code.

Unpickling calls whatever global a file names: a class to build, a function to call. Model-zoo
weight files need only numpy arrays in (ordered) dicts, whose pickles name a handful of numpy
and standard-library globals. :func:`load_weights_pickle` resolves exactly those; a file naming
any other global is refused, in one sentence, before that global is even imported.
``torch.load(weights_only=True)`` cannot read plain pickles, hence this reader.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from simcal.core.errors import input_error

#: (module, name) -> where it lives today. numpy 1.x pickles name ``numpy.core``; numpy 2 moved it
#: to ``numpy._core`` (the old name still imports, with a deprecation warning, so it is mapped here).
ALLOWED_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # protocol-2 pickles carry array bytes through it
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
}


class _Refused(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class WeightsUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose ``find_class`` knows only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise _Refused(module, name)
        return super().find_class(*target)


def load_weights_pickle(path: str | os.PathLike, what: str = "a weights file") -> Any:
    """The object pickled in ``path`` (latin-1 strings, as detectron2 reads its zoo files).

    A missing or unreadable file, a truncated or corrupt pickle, and a pickle naming a global
    outside :data:`ALLOWED_GLOBALS` are each one :class:`~simcal.core.errors.InputError`.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise input_error(path, "does not exist", "check the path")
    except OSError as e:
        raise input_error(path, f"cannot be read ({e.strerror})")
    with f:
        try:
            return WeightsUnpickler(f, encoding="latin1").load()
        except _Refused as e:
            raise input_error(path, f"is a pickle that names the global {e.qualname}, which {what} never needs, "
                              "so it was refused before anything in it ran",
                              "convert a file from a source you trust (detectron2's model zoo writes only arrays)")
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                UnicodeDecodeError, MemoryError) as e:
            raise input_error(path, f"is not a readable pickle ({type(e).__name__}: truncated or corrupt?)",
                              f"pass {what}")


__all__ = ["ALLOWED_GLOBALS", "WeightsUnpickler", "load_weights_pickle"]
