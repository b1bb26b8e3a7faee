"""``ENGINE.layers.json``: what each layer of a TensorRT engine is, which precision it runs in, and what
it costs, from the engine inspector (``ProfilingVerbosity.DETAILED``) and a per-layer profile.

Both inputs have documented formats that changed across versions, and both are parsed here, torch-free:

- Inspector JSON, TensorRT 8.6-10.x: ``{"Layers": [{"Name", "LayerType", "Inputs": [{"Name",
  "Dimensions", "Format/Datatype"}], "Outputs": [...], "TacticName", ...}], "Bindings": [names]}``.
  TensorRT 11 replaced ``Bindings`` with ``"I/O Tensors"`` and split ``Format/Datatype`` into a format
  and a data type. There is no precision key: a layer's precision is its first input's data type
  (how NVIDIA's trex reads it), its output's for layers without inputs. An engine built without
  DETAILED verbosity lists layer names only, and is refused with the flag that fixes it.
- Per-layer profile: trtexec's ``--exportProfile`` records, ``[{"count": N}, {"name", "timeMs",
  "averageMs", "medianMs", "percentage"}, ...]`` (``medianMs`` is absent before TensorRT 8.4), which
  is also what `edgetl build --profile` writes from TensorRT's IProfiler. Profile rows are joined to
  inspector layers by name; reformatting layers TensorRT inserts may appear in the profile only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import ArtifactError

SUFFIX = ".layers.json"
_PRECISIONS = (  # (pattern in a format or data-type string, precision); first match wins
    (r"\bint8\b", "int8"), (r"\bfp8\b|\bfloat8", "fp8"), (r"\bint4\b", "int4"), (r"\bfp4\b", "fp4"),
    (r"\bbf16\b|\bbfloat16?\b", "bf16"), (r"\bfp16\b|\bhalf\b", "fp16"), (r"\bfp32\b|\bfloat\b", "fp32"),
    (r"\bint32\b", "int32"), (r"\bint64\b", "int64"), (r"\bbool\b", "bool"),
)


def layers_path(engine: Path) -> Path:
    """``model.int8.engine`` → ``model.int8.layers.json`` beside it."""
    return Path(engine).with_suffix(SUFFIX)


def precision_of(tensor: dict[str, Any]) -> str | None:
    """A tensor entry's precision: from ``Format/Datatype`` (8.6-10.x) or the split keys (11.x)."""
    text = " ".join(str(tensor.get(k, "")) for k in ("Format/Datatype", "DataType", "Datatype", "Format"))
    low = text.lower()
    return next((p for pattern, p in _PRECISIONS if re.search(pattern, low)), None)


def parse_inspector(doc: Any, source: str) -> tuple[str, list[dict[str, Any]]]:
    """(format, layers) of an engine inspector document: ``"tensorrt-10"`` (8.6-10.x, ``Bindings``) or
    ``"tensorrt-11"`` (``I/O Tensors``); each layer as {name, type, precision, tactic, inputs, outputs}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("Layers"), list):
        raise ArtifactError(f"{source}: not TensorRT engine-inspector JSON (no Layers list)")
    if doc["Layers"] and all(isinstance(x, str) for x in doc["Layers"]):
        raise ArtifactError(f"{source}: the engine lists layer names only; rebuild it with `edgetl build --profile` "
                            "(ProfilingVerbosity DETAILED) for types, precisions and tactics")
    fmt = "tensorrt-11" if "I/O Tensors" in doc else "tensorrt-10"
    layers = []
    for raw in doc["Layers"]:
        if not isinstance(raw, dict) or "Name" not in raw:
            raise ArtifactError(f"{source}: a layer entry without a Name: {str(raw)[:80]}")
        ins, outs = raw.get("Inputs") or [], raw.get("Outputs") or []
        precision = next((p for t in (*ins, *outs) if (p := precision_of(t)) is not None), None)
        layers.append({"name": str(raw["Name"]), "type": str(raw.get("ParameterType") or raw.get("LayerType") or "?"),
                       "precision": precision, "tactic": raw.get("TacticName") or raw.get("TacticValue"),
                       "inputs": [precision_of(t) for t in ins], "outputs": [precision_of(t) for t in outs]})
    return fmt, layers


def parse_profile(records: Any, source: str) -> dict[str, dict[str, float]]:
    """{layer name: {median_ms, mean_ms, share}} from trtexec's --exportProfile records."""
    if not isinstance(records, list):
        raise ArtifactError(f"{source}: not a TensorRT layer profile (expected a list of records)")
    out: dict[str, dict[str, float]] = {}
    for r in records:
        if not isinstance(r, dict) or "name" not in r:
            continue  # the leading {"count": N}
        try:
            mean = float(r["averageMs"])
            out[str(r["name"])] = {"median_ms": float(r.get("medianMs", mean)), "mean_ms": mean,
                                   "share": float(r.get("percentage", 0.0)) / 100}
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{source}: layer record {str(r)[:80]} has no usable timing ({e})") from e
    return out


def layer_table(layers: list[dict[str, Any]], profile: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Inspector layers with their timings, then profiled layers the inspector does not list (reformats
    TensorRT inserted), slowest first; Constant and NoOp layers cost nothing and are left out."""
    rows, seen = [], set()
    for layer in layers:
        if layer["type"] in ("Constant", "NoOp"):
            continue
        seen.add(layer["name"])
        t = profile.get(layer["name"], {})
        rows.append({**{k: layer[k] for k in ("name", "type", "precision", "tactic")},
                     "median_ms": t.get("median_ms"), "share": t.get("share")})
    for name, t in profile.items():
        if name not in seen:
            rows.append({"name": name, "type": "Reformat" if "reformat" in name.lower() else "?", "precision": None,
                         "tactic": None, "median_ms": t["median_ms"], "share": t["share"]})
    return sorted(rows, key=lambda r: -(r["median_ms"] or 0.0))


def load_layers(engine: Path) -> dict[str, Any]:
    """The ``ENGINE.layers.json`` beside ``engine``, checked for what `edgetl bench --layers` reads."""
    path = layers_path(engine)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no layer profile; rebuild the engine with `edgetl build --profile`") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable layer profile ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise ArtifactError(f"{path}: not an edgetl layer profile (no layers list)")
    return doc
