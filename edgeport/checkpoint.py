"""Load a training checkpoint into the ``torch.nn.Module`` its factory builds, safely.

Checkpoints are read with ``torch.load(weights_only=True)``: a checkpoint that
needs arbitrary code to unpickle is refused rather than executed.
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

if TYPE_CHECKING:
    import torch

    from edgeport.spec import ModelSpec

__all__ = ["import_factory", "load_model", "load_state_dict"]


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


def load_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Read the state dict from ``spec.checkpoint`` with ``torch.load(weights_only=True)``.

    Returns:
        Mapping of parameter/buffer name -> tensor.

    Raises:
        CheckpointError: missing file; truncated or corrupt file; a pickle that needs code
            (refused, not executed); ``state_dict_key`` absent; content not a state dict.
    """
    import torch

    path = Path(spec.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint: file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
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
    if spec.state_dict_key is not None:
        if not isinstance(obj, dict) or spec.state_dict_key not in obj:
            keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(
                f"model.state_dict_key {spec.state_dict_key!r} not found in {path} (top-level keys: {keys})"
            )
        obj = obj[spec.state_dict_key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"model.checkpoint {path}: expected a state dict (name -> tensor)"
            + ("" if spec.state_dict_key else "; set model.state_dict_key if it is nested in a dict")
        )
    return obj


def load_model(spec: ModelSpec) -> torch.nn.Module:
    """Build the module with ``factory(**kwargs)``, load the checkpoint strictly, switch to eval mode.

    Raises:
        ModelFactoryError: the factory cannot be imported, fails, or returns no ``nn.Module``.
        CheckpointError: see :func:`load_state_dict`; also state-dict keys or tensor shapes that
            do not match the module (the message lists missing/unexpected keys).
    """
    import torch

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
        raise CheckpointError(
            f"model.checkpoint {spec.checkpoint} does not match model.factory {spec.factory!r}: {detail[:800]}"
        ) from None
    return module.eval()
