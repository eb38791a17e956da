"""Trained networks out of the project: `export(pre, fmt, out)` writes a `pretrained.Trained` as `safetensors` (weights;
spec, class names and image size in the metadata; the normalisation as two tensors), `onnx` or `pt2` (a
`torch.export` program): the eval graph with BN folded and a dynamic batch, checked against PyTorch on export.
The exporters' libraries are the `export` extra; every output exists whole or not at all."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from resnetlab.errors import ConfigError, ResnetlabError, one_line
from resnetlab.files.atomic import replace_with, temp_path
from resnetlab.networks.folding import fold_bn
from resnetlab.runs.outputs import check_output
from resnetlab.weights.formats import RESNETLAB

# stated tolerance of the exported graphs: max |logit difference| <= ATOL + RTOL * max |logit|
ATOL, RTOL = 1e-4, 1e-4

Trained = Any  # a `pretrained.Trained`: that module imports this one (its `export` method), so it is named here


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this needs the {module.split('.')[0]} package: pip install 'resnetlab[export]'") from None


def export(pre: Trained, fmt: str, out: str | Path) -> dict[str, Any]:
    """Write `pre` as `fmt` to `out` (atomically); returns what was written and, for graphs, the check."""
    if fmt not in WRITERS:
        raise ConfigError(f"--format {fmt!r}: one of {', '.join(WRITERS)}")
    out = check_output(out, [Path(pre.source)])
    writer = WRITERS[fmt]
    report: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        # written in a fresh folder beside `out` (the exporters may write side files there), then moved to `tmp`;
        # the folder's name is a temporary one (`temp_path`), which fits wherever `out`'s name fits
        folder = temp_path(out, suffix="")
        folder.mkdir(mode=0o700)
        try:
            work = folder / out.name
            with _quiet():
                report.update(writer(pre, work))
            work.replace(tmp)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    try:
        replace_with(out, fill)
    except ResnetlabError:
        raise
    except Exception as exc:  # an exporter's own failure: one line, no half-written file
        raise ConfigError(f"export to {fmt} failed ({type(exc).__name__}: {one_line(exc, 200)})"
                          ) from None
    return {"format": fmt, "path": str(out), "bytes": out.stat().st_size, **report}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' chatter (warnings, log lines about packages they do not need) kept off the terminal."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _write_safetensors(pre: Trained, path: Path) -> dict[str, Any]:
    st = _need("safetensors.torch")
    tensors = {k: v.detach().contiguous().clone() for k, v in pre.module.state_dict().items()}
    tensors["normalization.mean"] = pre.mean.contiguous().clone()
    tensors["normalization.std"] = pre.std.contiguous().clone()
    raw = st.save(tensors, metadata={"format": RESNETLAB, "resnetlab": json.dumps(pre.metadata())})
    path.write_bytes(_sorted_metadata(raw))
    return {}


def _sorted_metadata(raw: bytes) -> bytes:
    """The file with its metadata's keys in sorted order: the safetensors writer keeps them in a hash map, so their
    order, and the file's bytes, changed from one process to the next. Only the order changes, so the header keeps
    its length and every tensor its offset; where it would not (an escape written otherwise), the file is kept."""
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:
        return raw
    return raw[:8] + text.ljust(size, b" ") + raw[8 + size:]


def _eval_graph(pre: Trained) -> tuple[torch.nn.Module, Tensor, dict[str, Any]]:
    """The eval net with BN folded and the input normalisation inside (it takes pixels in [0, 1]), a batch of 4
    images to trace and check it with, and its dynamic batch axis."""

    class WithInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = fold_bn(pre.module).float()
            self.register_buffer("mean", pre.mean.clone())
            self.register_buffer("std", pre.std.clone())

        def forward(self, pixels: Tensor) -> Tensor:
            return self.net((pixels - self.mean) / self.std)

    x = torch.rand(4, pre.channels, pre.image_size, pre.image_size, generator=torch.Generator().manual_seed(0))
    return WithInput().eval(), x, {"pixels": {0: torch.export.Dim("batch", min=1, max=65536)}}


def _checked(pre: Trained, x: Tensor, run: Callable[[Tensor], np.ndarray], what: str) -> dict[str, Any]:
    """The exported graph's outputs (`run`) against PyTorch's, at two batch sizes: the batch axis is dynamic."""
    diffs = []
    with torch.no_grad():
        want = pre(x)
        for xb, wb in ((x, want), (x[:1], want[:1])):
            diff, bound = float(np.abs(run(xb) - wb.numpy()).max()), ATOL + RTOL * float(wb.abs().max())
            if not diff <= bound:
                raise ConfigError(f"{what}: exported outputs differ from PyTorch's by {diff:.3g} (bound {bound:.3g})")
            diffs.append(diff)
    return {"max_abs_diff": max(diffs), "tolerance": f"{ATOL} + {RTOL} x max|logit|"}


def _write_onnx(pre: Trained, path: Path) -> dict[str, Any]:
    onnx = _need("onnx")
    ort = _need("onnxruntime")
    _need("onnxscript")
    graph, x, batch = _eval_graph(pre)
    torch.onnx.export(graph, (x,), str(path), input_names=["pixels"], output_names=["logits"],
                      dynamic_shapes=batch, dynamo=True, verbose=False)
    proto = onnx.load(str(path))
    note = "pixels: float32 (N, C, S, S) in [0, 1]; normalisation is inside the graph"
    onnx.helper.set_model_props(proto, {"resnetlab": json.dumps(pre.metadata()), "input": note})
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _checked(pre, x, lambda xb: session.run(None, {"pixels": xb.numpy()})[0], "onnx")


def _write_pt2(pre: Trained, path: Path) -> dict[str, Any]:
    graph, x, batch = _eval_graph(pre)
    program = torch.export.export(graph, (x,), dynamic_shapes=batch)
    # saved in memory, then written by Python: torch's own file writer aborts the process on a full disk
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={"resnetlab.json": json.dumps(pre.metadata())})
    path.write_bytes(buf.getvalue())
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    return _checked(pre, x, lambda xb: loaded(xb).numpy(), "pt2")


# every format `resnetlab export` writes -> its writer (`formats.READERS` reads the safetensors back)
WRITERS: dict[str, Callable[[Trained, Path], dict[str, Any]]] = {
    "safetensors": _write_safetensors, "onnx": _write_onnx, "pt2": _write_pt2}
