"""Tied weights stored once in an ONNX graph (issue 14 §2).

Optimum exports a tied LM head as `Transpose(embed_tokens.weight)`, but any graph optimizer that folds
constants (onnxruntime's own, the transformer optimizer) turns that Transpose into a second initializer: the
embedding is then written twice, which for a small LM is a third of the file. `share_transposed_copies` undoes
it: an initializer that is exactly the transpose (or an exact copy) of another is replaced by a Transpose (or
Identity) node reading the original. Equality is exact, so the graph computes bit-identical results; onnxruntime
folds the node again in memory at session start, so speed is unchanged and only the file shrinks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SHARED_ELEMENTS = 1024  # below this a second copy costs nothing worth a node


@dataclass(frozen=True)
class Duplicate:
    """`copy` holds the same values as `original` (transposed when `transposed`)."""

    copy: str
    original: str
    transposed: bool
    bytes: int


def find_duplicates(model, min_elements: int = MIN_SHARED_ELEMENTS) -> list[Duplicate]:
    """Initializers that repeat another one exactly, as is or transposed (2-D only)."""
    from onnx import numpy_helper

    by_key: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    found = []
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) < min_elements:
            continue
        array = numpy_helper.to_array(init)
        for key, candidate in keys(array):
            for name, original in by_key.get(key, []):
                if np.array_equal(original, candidate):
                    found.append(Duplicate(init.name, name, candidate is not array, array.nbytes))
                    break
            else:
                continue
            break
        else:
            by_key.setdefault((array.dtype.str, array.shape), []).append((init.name, array))
    return found


def keys(array: np.ndarray):
    """The array as is, then transposed: the (dtype, shape) under which an earlier original would be filed."""
    yield (array.dtype.str, array.shape), array
    if array.ndim == 2 and array.shape[0] != array.shape[1]:
        transposed = array.T
        yield (transposed.dtype.str, transposed.shape), transposed


def share_transposed_copies(model) -> list[Duplicate]:
    """Replace every duplicate initializer by a node reading its original; returns what was shared."""
    from onnx import helper

    duplicates = find_duplicates(model)
    if not duplicates:
        return []
    gone = {d.copy for d in duplicates}
    kept = [init for init in model.graph.initializer if init.name not in gone]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = [
        helper.make_node(
            "Transpose" if d.transposed else "Identity",
            [d.original],
            [d.copy],
            name=f"shared/{d.copy}",
            **({"perm": [1, 0]} if d.transposed else {}),
        )
        for d in duplicates
    ]
    for i, node in enumerate(nodes):  # at the front: they read only initializers, so topological order holds
        model.graph.node.insert(i, node)
    return duplicates


def share_file_weights(path) -> dict:
    """Rewrite an ONNX file in place with its duplicate initializers shared; the figures for the report."""
    import onnx

    from compressor.onnx.optimize import save_model

    model = onnx.load(str(path))
    duplicates = share_transposed_copies(model)
    if duplicates:
        save_model(model, path)
    return {
        "shared_initializers": [
            f"{d.copy} = {'transpose of ' if d.transposed else ''}{d.original}" for d in duplicates
        ],
        "bytes_saved": sum(d.bytes for d in duplicates),
    }
