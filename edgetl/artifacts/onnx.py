"""Refuse an ONNX file before any runtime parses it: a damaged graph, or external data outside its folder.

ONNX keeps large weights in "external data" files named by a ``location`` string inside the
model. A model from elsewhere could name ``../../secret`` or a symlink to it, and the runtime
would read that file into a tensor. edgetl checks every location itself (not only the installed
onnx release's own checks), then runs ``onnx.checker`` on the file. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ArtifactError, one_line
from ..fileio import is_inside


def check_onnx_file(path: Path) -> None:
    """ArtifactError (exit 4) naming the file and the reason, or None when it is safe to hand to a runtime."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # google.protobuf DecodeError, onnx errors: not a model
        raise ArtifactError(f"{path}: not an ONNX model ({one_line(e)})") from e
    folder = path.parent.resolve()
    for name, location in _external_locations(model):
        target = folder / location
        if Path(location).is_absolute() or not is_inside(target.resolve(), folder):
            raise ArtifactError(f"{path}: tensor {name!r} takes its data from {location!r}, outside the model's "
                                "folder; refused (an ONNX file must not read other files)")
        if not target.is_file():
            raise ArtifactError(f"{path}: tensor {name!r} needs external data file {location!r}, which is missing")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # onnx.checker.ValidationError and friends
        raise ArtifactError(f"{path}: fails the ONNX checker ({one_line(e)})") from e


def _external_locations(model: Any) -> list[tuple[str, str]]:
    """(tensor name, location) for every tensor stored outside the file, subgraphs included."""
    from onnx.external_data_helper import uses_external_data

    return [(t.name, {e.key: e.value for e in t.external_data}.get("location", ""))
            for t in _tensors(model.graph) if uses_external_data(t)]


def _tensors(graph: Any) -> list[Any]:
    """Initializers, sparse initializers and tensor attributes of ``graph`` and of every subgraph."""
    out = list(graph.initializer)
    for sp in graph.sparse_initializer:
        out += [sp.values, sp.indices]
    for node in graph.node:
        for a in node.attribute:
            out += ([a.t] if a.HasField("t") else []) + list(a.tensors)
            out += [sp.values for sp in ([a.sparse_tensor] if a.HasField("sparse_tensor") else [])]
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out += _tensors(g)
    return out


