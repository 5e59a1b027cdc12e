"""Load a training checkpoint into the ``torch.nn.Module`` its factory builds, safely.

Checkpoints are read with ``torch.load(weights_only=True)``: a checkpoint that
needs arbitrary code to unpickle is refused rather than executed; ``.safetensors``
files with :func:`safetensors.torch.load_file` (no pickle at all). :func:`load_model`
also builds the module of the other model sources (:mod:`edgeport.sources`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import pickle
import pickletools
import re
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.errors import CheckpointError, ModelFactoryError
from edgeport.sources import load_exported_program, load_huggingface

if TYPE_CHECKING:
    import torch

    from edgeport.spec import ModelSpec

__all__ = ["STATE_DICT_KEYS", "import_factory", "load_model", "load_state_dict"]


def import_factory(spec: ModelSpec) -> Any:
    """Import ``spec.factory`` ("module:callable"), with ``spec.search_path`` prepended to ``sys.path``.

    Raises:
        ModelFactoryError: the module does not import or has no such attribute.
    """
    module_name, _, attr = spec.factory.partition(":")
    added = [str(p) for p in spec.search_path if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        top = module_name.split(".")[0]
        found = importlib.machinery.PathFinder.find_spec(top, [str(p) for p in spec.search_path])
        loaded = sys.modules.get(top)
        if found is not None and loaded is not None and getattr(loaded, "__file__", None) != found.origin:
            # Another module of the same name (e.g. a second example's `model`) was imported
            # earlier: the spec's own folder wins.
            for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[name]
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error raised while the module runs
        raise ModelFactoryError(
            f"model.factory {spec.factory!r}: cannot import module {module_name!r} "
            f"(searched {[str(p) for p in spec.search_path]} then sys.path): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelFactoryError(
                f"model.factory {spec.factory!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise ModelFactoryError(f"model.factory {spec.factory!r} is not callable")
    return obj


#: The global torch's weights-only unpickler refused, in the wordings of torch 2.4-2.13:
#: "Unsupported global: GLOBAL __main__.Net was not an allowed global by default" and
#: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_REFUSED_GLOBAL = re.compile(r"\bGLOBAL\s+([A-Za-z_][\w.<>]*)")

#: The unpickler's own boilerplate lines, skipped when quoting its reason.
_BOILERPLATE = ("Weights only load failed", "WeightsUnpickler error", "Check the documentation", "Re-running", "(1)", "(2)", "Please file an issue")


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _needed_global(message: str) -> str | None:
    """The global (``module.name``) named by torch's weights-only refusal, if it names one."""
    found = _REFUSED_GLOBAL.search(message)
    return found.group(1).rstrip(".") if found else None


def _pickle_bytes(path: Path) -> bytes | None:
    """The pickle inside a checkpoint: ``<archive>/data.pkl`` of a torch.save zip, else the file itself."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                return archive.read(name) if name else None
        data = path.read_bytes()
        return data if data.startswith(b"\x80") else None  # PROTO: a pickle of protocol >= 2, not other bytes
    except (OSError, zipfile.BadZipFile, KeyError):
        return None


def _first_unsafe_global(path: Path) -> str | None:
    """The first global a checkpoint's pickle imports outside ``torch``/``collections``, found by
    reading its opcodes (:func:`pickletools.genops`; nothing is executed). A fallback for torch
    versions whose refusal message does not name the global (e.g. "Unsupported operand 149" for a
    plain protocol-4 pickle)."""
    data = _pickle_bytes(path)
    if not data:
        return None
    strings: list[str] = []
    memo: dict[int, str] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = None
            if op.name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                name = f"{module}.{attr}"
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            elif isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            elif op.name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                strings.append(memo[arg])
            if name and _DOTTED.match(name) and not name.startswith(("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set")):
                return name
    except Exception:  # noqa: BLE001 - a damaged pickle: no global to report
        return None
    return None


def _torch_reason(exc: BaseException, limit: int = 240) -> str:
    """torch's reason for a failed load, in whole sentences (its messages run to several
    paragraphs of advice): the first informative line, cut after the last sentence that fits."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = next((ln for ln in reversed(lines) if not ln.startswith(_BOILERPLATE)), lines[0] if lines else "")
    line = re.sub(r"\x1b\[[0-9;]*m", "", line) or "(no message)"
    if len(line) <= limit:
        return line
    cut = max(line.rfind(". ", 0, limit), line.rfind("; ", 0, limit))
    if cut > 0:
        return line[: cut + 1]
    return line[: line.rfind(" ", 0, limit)] + " ..."


#: Keys under which training checkpoints keep the state dict, in the order they are tried:
#: Lightning's ``state_dict``, the PyTorch tutorials' ``model_state_dict``, and ``model``.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        size = path.stat().st_size
        raise CheckpointError(
            f"model.checkpoint {path}: not a readable .safetensors file ({size} bytes; {type(exc).__name__}: {exc})"
        ) from None


def _read_pickle(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch reports both "needs a non-allowlisted global" and "not a pickle at all" as
        # UnpicklingError("Weights only load failed..."); only the former names a global.
        needed = _needed_global(str(exc)) or _first_unsafe_global(path)
        if needed is None:
            raise CheckpointError(
                f"model.checkpoint {path}: corrupt or not a torch.save file (UnpicklingError: {_torch_reason(exc)})"
            ) from None
        raise CheckpointError(
            f"model.checkpoint {path}: refused: the checkpoint needs code to unpickle ({needed}); edgeport only "
            f"loads checkpoints with torch.load(weights_only=True), which runs no code. Save `model.state_dict()` "
            f"(tensors and plain Python types only)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - parsing arbitrary bytes can raise anything (EOFError, IndexError, ...)
        size = path.stat().st_size
        detail = "empty file" if size == 0 else f"{size} bytes; {type(exc).__name__}: {_torch_reason(exc)}"
        raise CheckpointError(f"model.checkpoint {path}: corrupt or truncated checkpoint ({detail})") from None


def _top_level(obj: Any) -> str:
    if not isinstance(obj, dict):
        return type(obj).__name__
    keys = list(obj)
    return str(keys[:12]) + (f" (+{len(keys) - 12} more)" if len(keys) > 12 else "")


def _find_state_dict(obj: Any, spec: ModelSpec, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: ``state_dict_key``'s value, the checkpoint
    itself, or the one of :data:`STATE_DICT_KEYS` that holds one."""
    if spec.state_dict_key is not None:
        if not isinstance(obj, dict) or spec.state_dict_key not in obj:
            raise CheckpointError(
                f"model.state_dict_key {spec.state_dict_key!r} not found in {path} (top-level keys: {_top_level(obj)})"
            )
        obj = obj[spec.state_dict_key]
        if not _is_state_dict(obj):
            raise CheckpointError(
                f"model.checkpoint {path}: model.state_dict_key {spec.state_dict_key!r} holds a "
                f"{type(obj).__name__}, not a state dict (name -> tensor)"
            )
        return obj
    if _is_state_dict(obj):
        return obj
    found = [k for k in STATE_DICT_KEYS if isinstance(obj, dict) and _is_state_dict(obj.get(k))]
    if len(found) == 1:
        return obj[found[0]]
    holding = [k for k, v in obj.items() if _is_state_dict(v)] if isinstance(obj, dict) else []
    if found:
        reason = f"several keys hold a state dict ({found}); set model.state_dict_key to the one to load"
    elif holding:
        reason = f"no state dict under {list(STATE_DICT_KEYS)}; keys holding one: {holding}; set model.state_dict_key"
    else:
        reason = "expected a state dict (name -> tensor) or a dict holding one; set model.state_dict_key if it is nested deeper"
    raise CheckpointError(f"model.checkpoint {path}: {reason} (top-level keys: {_top_level(obj)})")


def load_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Read the state dict of ``spec.checkpoint``.

    * ``.safetensors``: :func:`safetensors.torch.load_file` (no pickle at all);
    * anything else: ``torch.load(weights_only=True)``: a ``torch.save`` state dict, or a training
      checkpoint (Lightning ``.ckpt``: ``{"state_dict": ..., "epoch": ..., ...}``) whose state dict
      is found under ``spec.state_dict_key`` or, unset, the one of :data:`STATE_DICT_KEYS`
      that holds one.

    ``spec.strip_prefix`` (e.g. ``"model."``) is then removed from every key that has it.

    Returns:
        Mapping of parameter/buffer name -> tensor.

    Raises:
        CheckpointError: missing file; truncated or corrupt file; a pickle that needs code
            (refused, not executed); ``state_dict_key`` absent; no or several candidate state
            dicts (the message lists the top-level keys and what to set); ``strip_prefix``
            matching no key.
    """
    path = Path(spec.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint: file not found: {path}")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
        if spec.state_dict_key is not None:
            raise CheckpointError(f"model.state_dict_key: a .safetensors file ({path}) is a flat state dict; remove the field")
    else:
        state = _find_state_dict(_read_pickle(path), spec, path)
    prefix = spec.strip_prefix
    if prefix is not None:
        if not any(k.startswith(prefix) for k in state):
            raise CheckpointError(
                f"model.strip_prefix {prefix!r}: no key of {path} starts with it (keys: {list(state)[:6]})"
            )
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _shared_prefix(keys: list[str]) -> str | None:
    """The first dotted component every key shares (e.g. ``"model."``), if any."""
    heads = {k.split(".", 1)[0] for k in keys if "." in k}
    return f"{heads.pop()}." if len(heads) == 1 and all("." in k for k in keys) else None


def _mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor], spec: ModelSpec) -> str | None:
    """What differs between the module's and the checkpoint's tensors: missing / unexpected names and
    mismatched shapes, with shapes; None when they match."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and expected[k] != got[k]]
    if not (missing or unexpected or shapes):
        return None

    def listed(names: list[str], where: dict[str, tuple]) -> str:
        shown = ", ".join(f"{n} {list(where[n])}" for n in names[:8])
        return shown + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing in the checkpoint ({len(missing)}): {listed(missing, expected)}")
    if unexpected:
        parts.append(f"unexpected ({len(unexpected)}): {listed(unexpected, got)}")
    if shapes:
        parts.append("shape mismatch: " + ", ".join(f"{k} checkpoint {list(got[k])} vs model {list(expected[k])}" for k in shapes[:8]))
    prefix = _shared_prefix(unexpected)
    hint = ""
    if missing and prefix and spec.strip_prefix is None and {k.removeprefix(prefix) for k in unexpected} & set(missing):
        hint = f"; the checkpoint's keys carry the prefix {prefix!r} (a training wrapper's): set model.strip_prefix: {prefix!r}"
    return "; ".join(parts) + hint


def load_model(spec: ModelSpec) -> torch.nn.Module:
    """The ``torch.nn.Module`` of the spec's model source, in eval mode.

    * ``checkpoint`` + ``factory``: ``factory(**kwargs)`` with the checkpoint's state dict
      (:func:`load_state_dict`) loaded strictly;
    * ``huggingface``: :func:`edgeport.sources.load_huggingface`;
    * ``exported_program``: the program's module (:func:`edgeport.sources.load_exported_program`).

    Raises:
        ModelFactoryError: the factory cannot be imported, fails, or returns no ``nn.Module``.
        CheckpointError: see :func:`load_state_dict`; tensor names or shapes that do not match the
            module (the message lists missing / unexpected names and mismatched shapes); a
            source that cannot be loaded; an ``onnx`` source (no PyTorch module).
    """
    import torch

    if spec.source == "huggingface":
        return load_huggingface(spec)
    if spec.source == "exported_program":
        return load_exported_program(spec).module()
    if spec.source == "onnx":
        raise CheckpointError(f"model.onnx {spec.onnx}: an ONNX source has no PyTorch module")
    factory = import_factory(spec)
    state = load_state_dict(spec)
    try:
        module = factory(**spec.kwargs)
    except Exception as exc:
        raise ModelFactoryError(f"model.factory {spec.factory!r}(**{spec.kwargs}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelFactoryError(f"model.factory {spec.factory!r} returned {type(module).__name__}, not a torch.nn.Module")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        problem = _mismatch(module, state, spec) or "the tensors do not load"
        raise CheckpointError(
            f"model.checkpoint {spec.checkpoint} does not match model.factory {spec.factory!r}: {problem}. "
            f"torch: {detail[:600]}"
        ) from None
    return module.eval()
