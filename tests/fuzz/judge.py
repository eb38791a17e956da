"""The common judge, for every family: how a command must end (exit 0, or 2 with one line `resnetlab: error:`),
and what exit codes cannot show: half-written output, inputs changed, stdout unclean or not strict JSON, an
invalid input accepted, and (where the answer is known) another checkpoint's weights used (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from resnetlab.errors import EXIT_DIVERGED  # a diverged `train` (a reported result, not bad input)
from tests.fuzz.core import Case, Ended

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def exit_problem(ended: Ended) -> str | None:
    """The first problem with how the command ended: its exit code and its stderr."""
    argv, rc, stdout, text = ended.argv, ended.rc, ended.stdout, ended.stderr
    lines = [ln for ln in text.splitlines() if ln.startswith("resnetlab") or "Traceback" in ln]
    warned = [ln for ln in text.splitlines() if re.match(r"\S+:\d+: \w+Warning: ", ln)]  # Python's format
    rules = (
        ("Traceback" in text, "traceback on stderr"),
        # a library's warning reaching the user (PIL's decompression-bomb warning, torch's)
        (warned, "warning on stderr: " + re.sub(r"^.*?(\w+Warning: )", r"\1", (warned or [""])[0])[:120]),
        (rc not in (0, 1, EXIT_DIVERGED) and len([ln for ln in text.splitlines() if ln.strip()]) > 1,
         "more than one line on stderr"),
        (rc not in (0, 1, 2, EXIT_DIVERGED), f"exit {rc}"),
        (rc == 1 and "member run(s) failed" not in text, "exit 1 without a failed suite member"),
        (rc == EXIT_DIVERGED and (argv[:1] != ["train"] or "diverged" not in stdout),
         f"exit {EXIT_DIVERGED} without a diverged training"),
        (rc not in (0, EXIT_DIVERGED) and len(lines) != 1, f"{len(lines)} error lines, not one"))
    return next((problem for broken, problem in rules if broken), None)


def leftover_problem(ran: Ended) -> str | None:
    """A temporary file left in the case's directory (one the case itself made, a killed trainer's, is an input)."""
    leftovers = [rel for p in ran.root.rglob(".*tmp*") if p.is_file() and (rel := str(p.relative_to(ran.root)))
                 not in ran.files]
    return f"half-written output left: {leftovers[0]}" if leftovers else None


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    found: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                data = Path(path).read_bytes()
                found[rel] = ("file", len(data), hashlib.sha256(data).hexdigest())
            else:
                found[rel] = ("special",)
    return found


def _option(argv: list[str], *names: str) -> str | None:
    """The value of the first of `names` given (`-o X`, `--out X`; else `--out=X`)."""
    pairs = [*zip(argv, argv[1:], strict=False), *(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)]
    return next((value for name, value in pairs if name in names), None)


def _derived_writable(argv: list[str], root: Path) -> tuple[str, ...]:
    """For a case of the older families, which declare nothing: the targets of its output and --resume options,
    as given (not resolved: one may be a symlink loop)."""
    values = (_option(argv, "-o", "--output"), _option(argv, "--out"), _option(argv, "--resume"))
    return tuple(os.path.relpath(os.path.join(root, value), root) for value in values if value)


def newest_good(run: Path) -> Path | None:
    """The newest step checkpoint of `run` that verifies and holds weights: what a run directory means."""
    from resnetlab.errors import ResnetlabError
    from resnetlab.weights.checkpoint import is_tensor_map, load_checkpoint

    steps = [p for p in (run / "checkpoints").glob("step-*.pt") if re.fullmatch(r"step-\d{8}\.pt", p.name)]
    for path in sorted(steps, reverse=True):
        with contextlib.suppress(ResnetlabError):
            if path.is_file() and is_tensor_map(load_checkpoint(path)["model"]):
                return path
    return None


def _source(argv: list[str]) -> tuple[str | None, bool]:
    """The run directory, checkpoint or weights file a reader command names, and whether --best is given."""
    if argv[0] in ("hub", "hub.load"):
        return next((a.split("=", 1)[1] for a in argv if a.startswith("weights")), None), False
    weights = _option(argv, "--weights")
    return weights if weights is not None else next(iter(_positionals(argv)), None), "--best" in argv


def _positionals(argv: list[str]) -> list[str]:
    takes_value = {"--weights", "--model", "--top-k", "--format", "-o", "--output", "--data", "--split",
                   "--batch-size", "--device"}
    out, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a in takes_value:
            skip = True
        elif not a.startswith("-") or a == "-":
            out.append(a)
    return out


def _expected_weights(source: str | None, best: bool) -> Path | None:
    """The file whose weights a reader of `source` must use (None: unknown, or none is usable)."""
    if source is None:
        return None
    path = Path(source)
    if path.is_dir():
        if best:
            return path / "checkpoints" / "best.pt" if (path / "checkpoints" / "best.pt").is_file() else None
        return newest_good(path)
    return path if path.is_file() and not best else None


def state_of(path: Path) -> dict[str, Any] | None:
    """The weights a checkpoint or exported .safetensors holds (None: another kind of file)."""
    from resnetlab.weights.checkpoint import load_checkpoint

    raw = path.read_bytes()
    try:
        if raw.endswith(b"RESNETLAB-CKPT-1"):
            return dict(load_checkpoint(path)["model"])
        import safetensors.torch as stt

        return {k: v for k, v in stt.load(raw).items() if not k.startswith("normalization.")}
    except Exception:  # noqa: BLE001 - an unreadable file: no expectation
        return None


def same_state(got: dict[str, Any], want: dict[str, Any]) -> str | None:
    """How the tensors `got` differ from `want` (None: the same names, shapes and values)."""
    import torch

    if set(got) != set(want):
        return f"tensor names differ ({sorted(set(got) ^ set(want))[:2]})"
    for key in want:
        if got[key].shape != want[key].shape or not torch.equal(got[key].float(), want[key].float()):
            return f"tensor {key} differs"
    return None


def other_weights(got: dict[str, Any] | None, expected: Path | None) -> str | None:
    """How the weights `got` differ from those of the file a reader must use (None: the same, or unknown)."""
    want = state_of(expected) if expected is not None else None
    return same_state(got, want) if got is not None and want is not None else None


def _image_list(items: list[str]) -> list[str]:
    files: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        else:
            files.append(item)
    return files


def before(case: Case, argv: list[str], root: Path) -> Ended:
    """Record the case directory and what the answer must be, before the command runs."""
    writable = case.writable if case.writable is not None else _derived_writable(argv, root)
    state = Ended(case, argv, root, _snapshot(root), tuple(writable))
    command = argv[0] if argv else ""
    if command in ("export", "predict", "eval", "hub", "hub.load"):
        with contextlib.suppress(OSError):  # a path the OS refuses (a name too long, a loop): no answer known
            state.expected = _expected_weights(*_source(argv))
    if command == "export":
        state.output = _option(argv, "-o", "--output")
        state.extra["output_existed"] = state.output is not None and os.path.lexists(state.output)
    if command == "predict":
        items = _positionals(argv)
        with contextlib.suppress(OSError):
            state.images = _image_list(items if "--weights" in argv else items[1:])
        k = _option(argv, "--top-k") or "5"
        state.extra["top_k"] = int(k) if re.fullmatch(r"-?\d+", k) else None
    return state


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")

NON_FINITE = re.compile(r"(?<![\w.])[-+]?(nan|inf|infinity)(?![\w])", re.IGNORECASE)


def _inside(rel: str, prefixes: tuple[str, ...]) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


def after(ended: Ended) -> str | None:
    """The first problem the checks of inputs, output and answers find once the command has ended."""
    argv, rc, stdout = ended.argv, ended.rc, ended.stdout
    now = _snapshot(ended.root)
    for rel, was in ended.files.items():
        if not _inside(rel, ended.writable) and now.get(rel) != was:
            return f"input replaced: {rel}" if rel in now else f"input removed: {rel}"
    found = CONTROL.search(ended.stderr)
    if found:  # an error naming a hostile file or value: the terminal would obey its escape sequences
        return f"control character {found.group()!r} on stderr"
    if rc == 0 and ended.case.invalid:
        return f"accepted invalid input ({ended.case.invalid})"
    if rc == 0:
        problem = _stdout_problem(argv, stdout)
        if problem:
            return problem
    command = argv[0] if argv else ""
    if command == "export":
        return _export_problem(ended)
    if command == "predict" and rc == 0:
        return _predict_problem(ended)
    if command == "eval" and rc == 0 and ended.expected is not None:
        used = stdout.split(": ", 1)[0]
        if "/checkpoints/" in used and Path(used) != ended.expected:
            return f"eval used {Path(used).name}, not the newest good checkpoint {ended.expected.name}"
    return None


def _stdout_problem(argv: list[str], stdout: str) -> str | None:
    found = CONTROL.search(stdout)
    if found:
        return f"control character {found.group()!r} on stdout"
    for line in stdout.splitlines():
        if NON_FINITE.search(line):
            return f"non-finite number on stdout: {line.strip()[:100]!r}"
    if "--json" in argv:
        def refuse(token: str) -> Any:
            raise ValueError(f"bare {token}")

        try:
            json.loads(stdout, parse_constant=refuse)
        except ValueError as exc:
            return f"--json output is not strict JSON ({str(exc)[:80]})"
    return None


def _export_problem(ran: Ended) -> str | None:
    out, rc = ran.output, ran.rc
    if out is None or out in ("/dev/null",):
        return "export to /dev/null reported success" if rc == 0 and out == "/dev/null" else None
    if not out.strip():  # an empty -o is refused; Path("") would be the current folder, which exists anyway
        return "export to an empty path reported success" if rc == 0 else None
    path = Path(out)
    rel = os.path.relpath(path, ran.root) if path.is_absolute() else out
    if rc != 0:
        if os.path.lexists(path) and not ran.extra.get("output_existed"):
            return f"failed export left {rel}"
        return None
    if not path.is_file() or path.stat().st_size == 0:
        return f"export reported success but {rel} is not a whole file"
    fmt = _option(ran.argv, "--format")
    if fmt == "safetensors":
        import safetensors

        try:
            with safetensors.safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            json.loads(meta["resnetlab"])
        except Exception as exc:  # noqa: BLE001
            return f"exported safetensors unreadable: {type(exc).__name__}"
        diff = other_weights(state_of(path), ran.expected)
        if diff:
            return f"export wrote other weights than {ran.expected.name}: {diff}"
    elif fmt == "pt2":
        import zipfile

        if not zipfile.is_zipfile(path):
            return "exported pt2 is not a zip archive"
    elif fmt == "onnx":
        import onnx

        try:
            onnx.checker.check_model(str(path))
        except Exception as exc:  # noqa: BLE001
            return f"exported onnx fails onnx.checker: {type(exc).__name__}"
    return None


def _predict_problem(ran: Ended) -> str | None:
    images = ran.images
    if images is None:
        return None
    if "--json" not in ran.argv:
        lines = ran.stdout.splitlines()
        if len(lines) != len(images):
            return f"predict printed {len(lines)} lines for {len(images)} images"
        return None
    rows = json.loads(ran.stdout)
    if not isinstance(rows, list) or len(rows) != len(images):
        return f"predict --json gave {len(rows) if isinstance(rows, list) else '?'} rows for {len(images)} images"
    if sorted(str(r.get("image")) for r in rows) != sorted(images):
        return "predict --json rows do not name the images given"
    for row in rows:
        top = row.get("top")
        probs = [t.get("probability") for t in top] if isinstance(top, list) else None
        if not probs or not all(isinstance(p, float | int) and 0 <= p <= 1 for p in probs):
            return f"predict --json: probabilities not in [0, 1]: {str(probs)[:80]}"
        if any(a < b for a, b in zip(probs, probs[1:], strict=False)) or sum(probs) > 1 + 1e-4:
            return f"predict --json: probabilities not descending or summing above 1: {probs[:5]}"
        k = ran.extra.get("top_k")
        if k is not None and len(probs) > k:
            return f"predict --json: {len(probs)} classes for --top-k {k}"
    if ran.expected is not None and ran.expected.read_bytes().endswith(b"RESNETLAB-CKPT-1"):
        return _predict_oracle(rows, ran.expected)
    return None


def _predict_oracle(rows: list[dict[str, Any]], ckpt: Path) -> str | None:
    """The top class and probability each image gets from `ckpt`'s weights (the library's own preprocessing)."""
    import torch

    from resnetlab.weights.pretrained import load_image, load_pretrained

    pre = load_pretrained(ckpt)
    for row in rows:
        x = load_image(Path(row["image"]), pre)[None]
        with torch.no_grad():
            probs = torch.softmax(pre.module(pre.normalise(x)).float(), dim=1)[0]
        got = row["top"][0]
        mine = [float(p) for c, p in zip(pre.classes, probs.tolist(), strict=True) if c == got["class"]]
        # the top class (a tie may name either) with its probability, to the 6 digits predict prints
        if not mine or abs(max(mine) - got["probability"]) > 1e-4 or got["probability"] < float(probs.max()) - 1e-4:
            return (f"predict is not the answer of {ckpt.name}: {got['class']} {got['probability']:.4f}, "
                    f"{ckpt.name} gives {pre.classes[int(probs.argmax())]} {float(probs.max()):.4f}")
    return None
