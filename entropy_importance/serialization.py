"""Saving and reloading pruned models without pickling code.

Every model that ``prune()``, the CLI, :class:`~entropy_importance.Engine` or a pipeline returns carries a
:class:`PruningRecord`: what the unpruned base model was (its build spec when known, and the names and shapes of its
state dict), the example inputs' shapes, and Torch-Pruning's pruning history, one segment per dependency graph.
:func:`save_pruned` writes it with the pruned ``state_dict`` as a plain ``torch.save`` dictionary of tensors and
built-in types (``torch.load(..., weights_only=True)`` reads it). :func:`load_pruned` rebuilds the base (by name, or
from ``base_model=``), replays each segment on a dependency graph built inside :func:`~entropy_importance.repairs`,
restores the integer attributes that pruning helpers changed (``head_dim``, ...) and loads the weights: the outputs
are identical to the saved model's.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn as nn
import torch_pruning as tp

from .models import BuildSpec
from .repairs import repairs

__all__ = ["PruningRecord", "pruning_record", "attach_record", "save_pruned", "load_pruned", "read_pruned",
           "atomic_write", "replay_history", "describe_inputs", "make_inputs", "state_signature", "FORMAT", "VERSION"]

FORMAT = "entropy-importance/pruned-model"
VERSION = 2
_ATTRIBUTE = "_entropy_importance_record"  # set on pruned models (survives deepcopy)


@dataclass
class PruningRecord:
    """How a pruned model comes from its unpruned base.

    Attributes:
        base: how to build the base by name (None: pass ``base_model=`` to :func:`load_pruned`).
        base_signature: ``[name, shape]`` of every entry of the base's state dict, to check a base given at load.
        inputs: example inputs' description (:func:`describe_inputs`) for building the dependency graph.
        history: Torch-Pruning pruning history, one list of ``[layer, out_channels, indices]`` per dependency graph.
        meta: what was done (criterion, ratio, ...), JSON-able, informative.
    """

    base: BuildSpec | None
    base_signature: list
    inputs: Any
    history: list[list] = field(default_factory=list)
    meta: list[dict] = field(default_factory=list)

    def extended(self, segment: list, meta: dict | None = None) -> PruningRecord:
        """A new record with one more history segment (``pruner.pruning_history()`` of one dependency graph)."""
        entries = [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in segment]
        return PruningRecord(self.base, self.base_signature, self.inputs, [*self.history, entries] if entries else
                             list(self.history), [*self.meta, dict(meta or {})])


def state_signature(model: nn.Module) -> list:
    """``[name, shape]`` of every state-dict entry of ``model``."""
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def pruning_record(model: nn.Module) -> PruningRecord | None:
    """The record a pruned model carries, or None."""
    found = getattr(model, _ATTRIBUTE, None)
    return found if isinstance(found, PruningRecord) else None


def attach_record(model: nn.Module, record: PruningRecord) -> None:
    object.__setattr__(model, _ATTRIBUTE, record)


def describe_inputs(inputs: Any) -> Any:
    """A JSON-able description (shapes and dtypes) of example inputs: a tensor, or lists / tuples / dicts of them."""
    if isinstance(inputs, torch.Tensor):
        return {"shape": list(inputs.shape), "dtype": str(inputs.dtype).removeprefix("torch.")}
    if isinstance(inputs, dict):
        return {"dict": {str(k): describe_inputs(v) for k, v in inputs.items()}}
    if isinstance(inputs, (list, tuple)):
        return {"list" if isinstance(inputs, list) else "tuple": [describe_inputs(v) for v in inputs]}
    raise TypeError("example inputs must be tensors, or lists / tuples / dicts of tensors, got "
                    f"{type(inputs).__name__}")


def make_inputs(description: Any) -> Any:
    """Example inputs matching :func:`describe_inputs`' description (random floats, zeros for integer dtypes)."""
    bad = ValueError(f"not a description of example inputs: {str(description)[:200]}")
    if not isinstance(description, dict) or len(description) != 1 and "shape" not in description:
        raise bad
    if "shape" in description:
        dtype = getattr(torch, str(description.get("dtype", "float32")), None)
        shape = description["shape"]
        if not isinstance(dtype, torch.dtype) or not isinstance(shape, list) or not all(
                isinstance(n, int) and n >= 0 for n in shape):
            raise bad
        return torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
    kind, value = next(iter(description.items()))
    if kind == "dict" and isinstance(value, dict):
        return {k: make_inputs(v) for k, v in value.items()}
    if kind in ("list", "tuple") and isinstance(value, list):
        made = [make_inputs(v) for v in value]
        return made if kind == "list" else tuple(made)
    raise bad


# ---------------------------------------------------------------------------------------------------- writing
_umask_lock = threading.Lock()


def _umask() -> int:
    try:  # Linux: read it without changing it
        found = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.M)
        if found:
            return int(found.group(1), 8)
    except OSError:
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``; on any error the
    temporary file is removed and ``path`` is untouched. The file gets the mode an existing ``path`` had, else
    the one ``open()`` would give it (``0o666`` less the umask), not ``mkstemp``'s ``0o600``."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _int_attributes(model: nn.Module) -> dict[str, dict[str, int]]:
    return {
        name: attrs
        for name, module in model.named_modules()
        if (attrs := {k: v for k, v in vars(module).items() if type(v) is int and not k.startswith("_")})
    }


def save_pruned(path: str | os.PathLike, model: nn.Module, meta: dict | None = None) -> None:
    """Write a model returned by ``prune()``, the CLI, the engine or a pipeline to ``path`` (atomically).

    Raises:
        ValueError: ``model`` carries no pruning record (it was not pruned by this package).
    """
    record = pruning_record(model)
    if record is None:
        raise ValueError("this model carries no pruning record: save models returned by entropy_importance.prune(), "
                         "the Engine, a pipeline or load_pruned(); for a model pruned with Torch-Pruning directly "
                         "use torch.save(model) or Torch-Pruning's own serialization")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "base": None if record.base is None else {"spec": record.base.spec, "num_classes": record.base.num_classes,
                                                  "model_kwargs": dict(record.base.model_kwargs)},
        "base_signature": record.base_signature,
        "inputs": record.inputs,
        "history": record.history,
        "record_meta": record.meta,
        "meta": dict(meta or {}),
        "attributes": _int_attributes(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda f: torch.save(payload, f))


# ---------------------------------------------------------------------------------------------------- reading
class _Bad(ValueError):
    pass


def _need(payload: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in payload:
        raise _Bad(f"missing {key!r}")
    if not isinstance(payload[key], kind):
        raise _Bad(f"{key!r} has the wrong type ({type(payload[key]).__name__})")
    return payload[key]


def read_pruned(path: str | os.PathLike) -> dict:
    """The saved dictionary, with its header and fields checked.

    Raises:
        ValueError: not such a file, a newer format, or a truncated / tampered one (names what is wrong).
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, or carrying code
        raise ValueError(f"{path}: cannot read a pruned model saved by entropy-importance "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pruned model saved by entropy-importance (no {FORMAT!r} header)")
    if not isinstance(payload.get("version"), int) or payload["version"] > VERSION:
        raise ValueError(f"{path} was saved in format version {payload.get('version')!r}; this entropy-importance "
                         f"reads up to {VERSION}: upgrade it")
    if payload["version"] < VERSION:
        raise ValueError(f"{path} is in the old format {payload['version']}: prune the model again with this version")
    try:
        base = _need(payload, "base", (dict, type(None)))
        if base is not None:
            _need(base, "spec", str), _need(base, "model_kwargs", dict)
        _need(payload, "base_signature", list), _need(payload, "attributes", dict)
        for segment in _need(payload, "history", list):
            if not isinstance(segment, list) or not all(
                    isinstance(h, list) and len(h) == 3 and isinstance(h[0], str) and isinstance(h[2], list)
                    for h in segment):
                raise _Bad("'history' is not a list of [layer, out_channels, indices] segments")
        state = _need(payload, "state_dict", dict)
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise _Bad("'state_dict' holds values that are not tensors")
        make_inputs(_need(payload, "inputs", dict))
    except (_Bad, ValueError) as e:
        raise ValueError(f"{path}: damaged pruned-model file: {e}") from None
    return payload


def load_pruned(path: str | os.PathLike, base_model: nn.Module | None = None,
                map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (or ``entropy-prune --out``), in eval mode.

    Args:
        base_model: the unpruned architecture, for models that were not built by name (your own classes); it is
            copied, not modified. Default: rebuild the base by the name the file records (timm / torchvision).

    Raises:
        ValueError: a damaged file, no base to rebuild, a base that does not fit, or a history that does not replay.

    Example:
        >>> model = load_pruned("resnet18_pruned.pt")
    """
    payload = read_pruned(path)
    model = _rebuild(payload, base_model, str(path))
    return model.to(map_location)


def _rebuild(payload: dict, base_model: nn.Module | None, where: str) -> nn.Module:
    spec = payload["base"]
    if base_model is not None:
        model = copy.deepcopy(base_model)
    elif spec is None:
        raise ValueError(f"{where}: the base model was not built by name (a model of your own): pass "
                         "load_pruned(path, base_model=YourModel(...)) with the unpruned architecture")
    else:
        build = BuildSpec(spec["spec"], spec.get("num_classes"), dict(spec["model_kwargs"]))
        try:
            model = build.build()
        except Exception as e:  # noqa: BLE001 - unknown name, a constructor argument this version lacks
            raise ValueError(f"{where}: cannot rebuild the base model {build.spec!r} ({type(e).__name__}: {e}); "
                             "pass base_model=") from None
    model.eval()
    expected = [[k, list(s)] for k, s in payload["base_signature"]]
    found = state_signature(model)
    if found != expected:
        diff = next(((a, b) for a, b in zip(found, expected, strict=False) if a != b), None)
        detail = f"first difference: {diff[0]} here, {diff[1]} in the file" if diff else \
            f"{len(found)} state-dict entries here, {len(expected)} in the file"
        raise ValueError(f"{where}: the base model does not match the one that was pruned ({detail})")
    try:
        replay_history(model, payload["history"], make_inputs(payload["inputs"]))
    except _Bad as e:
        raise ValueError(f"{where}: damaged pruned-model file: {e}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    modules = dict(model.named_modules())
    for name, attrs in payload["attributes"].items():
        if name in modules and isinstance(attrs, dict):
            for key, value in attrs.items():
                if isinstance(value, int):
                    setattr(modules[name], key, value)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{where}: the weights do not fit the rebuilt model "
                         f"({str(e).strip().splitlines()[0][:200]})") from None
    attach_record(model, PruningRecord(
        None if spec is None else BuildSpec(spec["spec"], spec.get("num_classes"), dict(spec["model_kwargs"])),
        payload["base_signature"], payload["inputs"], payload["history"], list(payload.get("record_meta", []))))
    return model.eval()


def replay_history(model: nn.Module, history: list[list], inputs: Any) -> None:
    """Prune ``model`` in place by replaying a pruning history (one list of ``[layer, out_channels, indices]`` per
    dependency graph, as :class:`PruningRecord` holds it) on dependency graphs built on ``inputs``, inside
    :func:`~entropy_importance.repairs`; each entry is checked before it is applied.

    Raises:
        ValueError: the history names a layer ``model`` lacks, a channel out of range, or does not replay
            (``model`` is then partly pruned: replay on a copy).
    """
    modules = dict(model.named_modules())
    try:
        with repairs(group_time_limit=None), torch.enable_grad():
            for segment in history:
                unknown = next((h[0] for h in segment if h[0] not in modules), None)
                if unknown is not None:
                    raise _Bad(f"the history names layer {unknown!r}, which the base model does not have")
                graph = tp.DependencyGraph().build_dependency(model, inputs, verbose=False)
                for name, out, idxs in segment:  # Torch-Pruning's load_pruning_history, each entry checked first
                    module = modules[name]
                    pruner = graph.get_pruner_of_module(module)
                    width = pruner.get_out_channels(module) if out else pruner.get_in_channels(module)
                    if idxs and (min(idxs) < 0 or (isinstance(width, int) and max(idxs) >= width)):
                        raise _Bad(f"the history prunes channel {max(idxs)} of layer {name!r}, which has {width}")
                    fn = pruner.prune_out_channels if out else pruner.prune_in_channels
                    graph.get_pruning_group(module, fn, idxs).prune(record_history=False)
    except _Bad:
        raise
    except Exception as e:  # noqa: BLE001 - indices out of range, a tampered history
        raise ValueError(f"the pruning history does not replay on the base model "
                         f"({type(e).__name__}: {str(e)[:160]})") from None
