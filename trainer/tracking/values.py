"""Turning what users log into plain data: numbers, arrays, histograms, PNG bytes, JSON config.

numpy, Pillow and (for tensors) torch are imported inside the functions that need them, so that
importing the tracking store stays cheap and torch-free.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def to_number(name: str, value: Any) -> int | float | bool:
    """`value` as a plain bool, int or float (numpy scalars and one-element tensors too)."""
    if isinstance(value, (bool, int, float)):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            plain = item()
        except (ValueError, RuntimeError) as exc:  # an array or tensor of more than one value
            raise TypeError(f"logged value {name!r} is not a single number: {exc}") from None
        if isinstance(plain, (bool, int, float)):
            return plain
    raise TypeError(
        f"logged value {name!r} is a {type(value).__name__}; log numbers (int, float, bool), "
        "and histograms or images with log_histogram/log_image"
    )


def to_array(values: Any) -> np.ndarray:
    """`values` (a list, a numpy array or a tensor on any device) as a numpy array."""
    import numpy as np

    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()  # a torch tensor, converted without importing torch
    return np.asarray(values)


def histogram(name: str, values: Any, bins: int) -> tuple[list[float], list[int]]:
    """The bin edges and counts of the finite `values` (as numpy.histogram computes them)."""
    import numpy as np

    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"log_histogram({name!r}): bins={bins!r} must be a positive integer")
    array = to_array(values).astype(np.float64, copy=False).ravel()
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        raise ValueError(f"log_histogram({name!r}): no finite values among {array.size} given")
    counts, edges = np.histogram(finite, bins=bins)
    return [float(e) for e in edges], [int(c) for c in counts]


def png_bytes(name: str, image: Any) -> tuple[bytes, int, int]:
    """`image` (a PNG/JPEG/... file, or an HxW / HxWx{1,3,4} array) as PNG bytes, width, height."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"log_image({name!r}): no image file {path}") from None
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size
            if data.startswith(PNG_SIGNATURE):
                return data, width, height  # already a PNG: stored byte for byte
            return _encode(picture), width, height
    picture = Image.fromarray(_image_array(name, image))
    return _encode(picture), picture.width, picture.height


def _encode(picture: Any) -> bytes:
    if picture.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        picture = picture.convert("RGBA" if "A" in picture.getbands() else "RGB")
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _image_array(name: str, image: Any) -> np.ndarray:
    import numpy as np

    array = to_array(image)
    shape = array.shape
    if array.ndim == 3 and shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (3, 4))):
        hint = (
            " (channels first? use .permute(1, 2, 0) or .transpose(1, 2, 0))"
            if (array.ndim == 3 and shape[0] in (1, 3, 4))
            else ""
        )
        raise ValueError(
            f"log_image({name!r}): an array of shape {shape} is not HxW or HxWx1/3/4{hint}"
        )
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min(initial=0)), int(array.max(initial=0))
        if low < 0 or high > 255:
            raise ValueError(
                f"log_image({name!r}): integer pixels range over [{low}, {high}]; use uint8 "
                "values in [0, 255] or floats in [0, 1]"
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not np.isfinite(array).all():
            raise ValueError(f"log_image({name!r}): the float pixels hold NaN or infinity")
        low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(
                f"log_image({name!r}): float pixels range over [{low:g}, {high:g}], not [0, 1]; "
                "scale them or pass uint8"
            )
        return np.rint(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    raise ValueError(f"log_image({name!r}): pixels of dtype {array.dtype} are not supported")


def jsonable(value: Any) -> Any:
    """`value` made of plain JSON/msgpack types (mappings, lists, str, numbers, None)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return jsonable(item())
        except (ValueError, RuntimeError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return jsonable(tolist())
    return str(value)
