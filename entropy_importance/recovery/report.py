"""What a recovery did, layer by layer: accuracy-free evidence (reconstruction error before and after)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["LayerRecovery", "RecoveryReport"]


@dataclass
class LayerRecovery:
    """One conv / linear layer of the pruned model.

    Attributes:
        status: ``"refitted"`` (new weights), ``"unchanged"`` (its input is the unpruned network's: nothing to fit),
            ``"kept"`` (the fit was not better on the calibration samples), ``"skipped"`` (see ``note``).
        error_before / error_after: ``||W x - y||² / ||y||²`` over the calibration samples, where ``x`` is the
            layer's input in the pruned network (earlier layers already refitted) and ``y`` the unpruned layer's
            output for the channels kept; before and after the refit.
        heldout_before / heldout_after: the same on the calibration images held out of the fit (every fourth),
            for the ridge chosen on them (``ridge``).
    """

    name: str
    status: str
    dim: int = 0
    samples: int = 0
    error_before: float | None = None
    error_after: float | None = None
    heldout_before: float | None = None
    heldout_after: float | None = None
    ridge: float | None = None
    note: str = ""


@dataclass
class RecoveryReport:
    """A recovery run: the method, its seconds, the calibration images used and every layer's record."""

    method: str
    seconds: float = 0.0
    images: int = 0
    layers: list[LayerRecovery] = field(default_factory=list)
    batchnorm_layers: int = 0
    note: str = ""

    @property
    def refitted(self) -> list[LayerRecovery]:
        return [layer for layer in self.layers if layer.status == "refitted"]

    def summary(self) -> dict:
        """A compact JSON-able record: method, seconds, images, layers refitted, the mean relative error of the
        refitted layers before and after, BatchNorm layers re-estimated."""
        fitted = self.refitted
        def mean(key: str) -> float | None:
            values = [getattr(r, key) for r in fitted if getattr(r, key) is not None]
            return sum(values) / len(values) if values else None

        return {"method": self.method, "seconds": round(self.seconds, 3), "images": self.images,
                "refitted": len(fitted), "error_before": mean("error_before"), "error_after": mean("error_after"),
                "heldout_before": mean("heldout_before"), "heldout_after": mean("heldout_after"),
                "batchnorm_layers": self.batchnorm_layers}

    def to_dict(self) -> dict:
        return {"method": self.method, "seconds": self.seconds, "images": self.images,
                "batchnorm_layers": self.batchnorm_layers, "note": self.note,
                "layers": [asdict(layer) for layer in self.layers]}

    def __str__(self) -> str:
        lines = [f"recovery {self.method}: {len(self.refitted)} layers refitted, {self.batchnorm_layers} BatchNorm "
                 f"layers re-estimated, {self.images} calibration images, {self.seconds:.1f} s"]
        if self.note:
            lines.append(self.note)
        for layer in self.layers:
            if layer.status == "refitted":
                held = "" if layer.heldout_after is None else \
                    f", held out {layer.heldout_before:.4f} -> {layer.heldout_after:.4f}, ridge {layer.ridge:g}"
                lines.append(f"  {layer.name}: error {layer.error_before:.4f} -> {layer.error_after:.4f} "
                             f"(d={layer.dim}, {layer.samples} samples{held})")
            elif layer.status == "skipped":
                lines.append(f"  {layer.name}: skipped ({layer.note})")
        return "\n".join(lines)
