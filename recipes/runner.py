"""One runner for every recipe: ``structure`` (the pruning alone, on random or given weights, no data) and ``run``
(base training or a checkpoint, the paper's pipeline with its fine-tunes, the final evaluation, the table "the paper
vs this run", a plot of accuracy and MACs against the stages)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from entropy_importance import create_pipeline, load_pruned, requirements, save_pruned
from entropy_importance.engine import count_params, tp_macs
from entropy_importance.pipelines import LayerByLayerPipeline, Stage
from entropy_importance.serialization import atomic_write, read_pruned

from .data import load_data, synthetic_calibration
from .detection import DETECTION, evaluate_map
from .models import RecipeError, apply_transform, build_model, load_checkpoint
from .recipe import SMOKE, Recipe, Schedule
from .trainer import CLASSIFICATION, Runtime, batches_of, evaluate, fit, latency_ms
from .voc import voc_data

__all__ = ["RunOptions", "structure", "run", "compare_to_paper", "load_result", "TOLERANCE_PP"]

#: how close (percentage points) a structural reduction must come to the paper's
TOLERANCE_PP = 1.0


@dataclass
class RunOptions:
    data_dir: str | None = None
    download: bool = False
    dataset: str | None = None
    checkpoint: str | None = None
    pretrained: bool = False
    device: str = "cpu"
    smoke: bool = False
    out: str | None = None
    json_path: str | None = None
    resume: bool = False
    seed: int = 0
    workers: int = 0
    quiet: bool = False


def _reduction(before: int | None, after: int | None) -> float | None:
    return None if not before or after is None else round(100.0 * (1.0 - after / before), 2)


def compare_to_paper(recipe: Recipe, params_before: int, params_after: int, macs_before: int | None,
                     macs_after: int | None) -> dict[str, Any]:
    """The structural numbers beside the paper's claim: reductions in percent, their gaps in percentage points,
    and whether each reported one is met within :data:`TOLERANCE_PP`."""
    params, macs = _reduction(params_before, params_after), _reduction(macs_before, macs_after)
    result: dict[str, Any] = {"params_before": params_before, "params_after": params_after,
                              "macs_before": macs_before, "macs_after": macs_after,
                              "params_reduction": params, "macs_reduction": macs,
                              "paper": {"params_reduction": recipe.claim.params, "macs_reduction": recipe.claim.macs,
                                        "accuracy": recipe.claim.accuracy, "source": recipe.claim.source}}
    checks = {}
    for key, ours, theirs in (("params", params, recipe.claim.params), ("macs", macs, recipe.claim.macs)):
        if theirs is not None:
            checks[key] = {"gap_pp": None if ours is None else round(ours - theirs, 2),
                           "within_tolerance": ours is not None and abs(ours - theirs) <= TOLERANCE_PP}
    result["checks"] = checks
    result["matches_paper"] = all(c["within_tolerance"] for c in checks.values())
    return result


def _pipeline(recipe: Recipe, structure_only: bool):
    options = dict(recipe.pipeline_options)
    pipeline = create_pipeline(recipe.pipeline, **options)
    if structure_only and isinstance(pipeline, LayerByLayerPipeline):
        # the widths a layer-by-layer run reaches are its table's; a one-shot prune of the table gives them at once
        pipeline.order = "one-shot"
    return pipeline


def structure(recipe: Recipe, checkpoint: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Apply ``recipe``'s pruning to its network (random weights, or ``checkpoint``) without data: data-driven
    criteria are measured on seeded Gaussian images, layer-by-layer schedules prune their table at once (same
    widths). Returns the params and MACs before and after (Torch-Pruning's counter) beside the paper's claim."""
    t = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(recipe.model, recipe.num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, f"{recipe.model} with {recipe.num_classes} classes")
    model.eval()
    example = torch.randn(1, 3, recipe.input_size, recipe.input_size)
    params_before, macs_before = count_params(model), tp_macs(model, example)
    work = apply_transform(model, recipe.transform)
    images = 8 if recipe.imagenet_scale or recipe.task == "detection" else 64
    calibration = synthetic_calibration(recipe.input_size, recipe.num_classes, images, seed)
    pruned, report = _pipeline(recipe, structure_only=True).run(work, example, calibration_data=calibration,
                                                                recover=None, **recipe.target)
    result = compare_to_paper(recipe, params_before, count_params(pruned), macs_before, tp_macs(pruned, example))
    return {"recipe": recipe.name, "mode": "structure-only", "seconds": round(time.perf_counter() - t, 1),
            **result, "stages": len(report.stages), "reading": recipe.reading}


def _smoke_schedule(schedule: Schedule | None, steps: int, lr: float, decay: str,
                    batch_size: int = SMOKE.batch_size) -> Schedule | None:
    if schedule is None:
        return None
    return Schedule(epochs=0, lr=lr, batch_size=batch_size, weight_decay=5e-4, decay=decay, steps=steps)


def _schedules(recipe: Recipe, smoke: bool) -> tuple[Schedule, Schedule | None, Schedule]:
    if not smoke:
        return recipe.train, recipe.recovery, recipe.final
    if recipe.task == "detection":
        lr, batch = SMOKE.detection_lr, SMOKE.detection_batch_size
        return (_smoke_schedule(recipe.train, SMOKE.detection_train_steps, lr, "cosine", batch),
                _smoke_schedule(recipe.recovery, 1, lr, "cosine", batch),
                _smoke_schedule(recipe.final, SMOKE.detection_final_steps, lr, "cosine", batch))
    return (_smoke_schedule(recipe.train, SMOKE.train_steps, SMOKE.train_lr, "onecycle"),
            _smoke_schedule(recipe.recovery, SMOKE.recovery_steps, SMOKE.finetune_lr, "cosine"),
            _smoke_schedule(recipe.final, SMOKE.final_steps, SMOKE.finetune_lr, "cosine"))


def _plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    stages = report["stages"]
    names = ["base"] + [s["stage"]["name"] for s in stages]
    macs = [report["macs_before"]] + [s["macs"] for s in stages]
    metric = [report["metric_before"]] + [s["metric"] for s in stages]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    ax.plot(range(len(names)), [m / 1e6 if m else float("nan") for m in macs], "o-", color="tab:blue")
    ax.set_ylabel("MACs (M)", color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
    other = ax.twinx()
    other.plot(range(len(names)), [m if m is not None else float("nan") for m in metric], "s-", color="tab:red")
    other.set_ylabel("validation accuracy (%)", color="tab:red")
    ax.set_title(report["pipeline"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _table(recipe: Recipe, result: dict) -> str:
    def pct(v):
        return "-" if v is None else f"-{v:.1f} %"

    paper = result["paper"]
    rows = ["| | the paper | this run |", "|---|---|---|",
            f"| {recipe.metric} | {paper['accuracy']} | {result['accuracy_before']:.2f} % -> "
            f"{result['accuracy_after']:.2f} % "
            f"({result['accuracy_after'] - result['accuracy_before']:+.2f}) |",
            f"| params | {pct(paper['params_reduction'])} | {pct(result['params_reduction'])} "
            f"({result['params_before'] / 1e6:.2f} M -> {result['params_after'] / 1e6:.2f} M) |",
            f"| MACs | {pct(paper['macs_reduction'])} | {pct(result['macs_reduction'])} |",
            f"| latency ({result['device']}, batch 1) | - | {result['latency_before_ms']:.2f} ms -> "
            f"{result['latency_after_ms']:.2f} ms |"]
    return f"{recipe.name} ({recipe.paper})\n" + "\n".join(rows)


def _prepare(recipe: Recipe, options: RunOptions):
    """Everything that can be wrong with the input, checked before anything is trained or written."""
    runtime = Runtime.create(options.device, options.workers, options.quiet)
    if recipe.task == "detection":
        if options.dataset not in (None, recipe.dataset):
            raise RecipeError(f"{recipe.name} is a detection recipe: it runs on {recipe.dataset} only")
        if requirements(create_pipeline(recipe.pipeline, **recipe.pipeline_options).importance).data:
            raise RecipeError(f"{recipe.name}: detection recipes take data-free criteria")
        data = voc_data(options.data_dir, options.download, val_images=1 if options.smoke else 500,
                        smoke=options.smoke)
        dataset, size = recipe.dataset, recipe.input_size
    else:
        dataset = "fashion-mnist" if options.smoke else (options.dataset or recipe.dataset)
        size = (64 if recipe.imagenet_scale else 32) if dataset == "fashion-mnist" else recipe.input_size
        limits = (SMOKE.train_images + 256, SMOKE.test_images) if options.smoke else (None, None)
        val_images = 256 if options.smoke else (10000 if dataset == "imagenet" else 5000)
        calibration = SMOKE.calibration_images if options.smoke else recipe.calibration_images
        data = load_data(dataset, size, data_dir=options.data_dir, download=options.download,
                         val_images=val_images, calibration_images=calibration, train_limit=limits[0],
                         test_limit=limits[1])
    torch.manual_seed(options.seed)
    model = build_model(recipe.model, data.num_classes, options.pretrained)
    if options.checkpoint is not None:
        load_checkpoint(model, options.checkpoint, f"{recipe.model} with {data.num_classes} classes")
    return runtime, dataset, data, size, model


def _measures(recipe: Recipe, runtime: Runtime):
    """(training task, metric in percent on a dataset) of the recipe's task."""
    if recipe.task == "detection":
        return DETECTION, lambda m, ds: 100.0 * evaluate_map(m, ds, runtime)
    return CLASSIFICATION, lambda m, ds: evaluate(m, ds, runtime)


def run(recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    """The whole recipe: train the base network (unless ``checkpoint`` / ``pretrained``), run the pipeline with the
    recipe's fine-tunes (checkpointed after every epoch and stage; ``resume`` continues), evaluate, and write the
    report (JSON), the pruned model (``pruned.pt``, ``load_pruned`` reads it) and a plot into ``out``."""
    runtime, dataset, data, size, model = _prepare(recipe, options)
    task, measure = _measures(recipe, runtime)
    train_schedule, recovery, final = _schedules(recipe, options.smoke)
    repeats = 5 if options.smoke and recipe.task == "detection" else 20
    out = Path(options.out or Path("runs") / (recipe.name + ("-smoke" if options.smoke else "")))
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if options.checkpoint is None and not options.pretrained:
        fit(model, data.train, train_schedule, runtime, seed=options.seed, checkpoint=out / "base-training.pt",
            tag="base", resume=options.resume, desc=f"{recipe.name}: base", task=task)
    model.to(runtime.device).eval()
    example = torch.randn(1, 3, size, size, device=runtime.device)
    params_before, macs_before = count_params(model), tp_macs(model, example)
    accuracy_before = measure(model, data.test)
    latency_before = latency_ms(model, size, runtime, repeats=repeats)
    work = apply_transform(model, recipe.transform)

    def finetune(m: nn.Module, stage: Stage) -> None:
        schedule = final if stage.kind == "final" else recovery
        if schedule is not None:
            fit(m, data.train, schedule, runtime, seed=options.seed + 1 + stage.index,
                checkpoint=out / "finetune.pt", tag=f"stage {stage.index}", resume=options.resume,
                desc=f"{recipe.name}: {stage.name}", task=task)

    pipeline_file = out / "pipeline.pt"
    pruned, report = _pipeline(recipe, structure_only=False).run(
        work, example, calibration_data=list(batches_of(data.calibration)) if len(data.calibration) else None,
        finetune=finetune, evaluate=lambda m: measure(m, data.val), checkpoint=pipeline_file,
        resume=pipeline_file if options.resume and pipeline_file.exists() else None, **recipe.target)
    result = compare_to_paper(recipe, params_before, count_params(pruned), macs_before, tp_macs(pruned, example))
    result.update(recipe=recipe.name, mode="smoke" if options.smoke else "full", device=str(runtime.device),
                  processes=runtime.world, dataset=dataset,
                  input_size=size, metric=recipe.metric, accuracy_before=accuracy_before,
                  accuracy_after=measure(pruned, data.test), latency_before_ms=latency_before,
                  latency_after_ms=latency_ms(pruned, size, runtime, repeats=repeats),
                  seconds=round(time.perf_counter() - t0, 1), pipeline=report.to_dict(), reading=recipe.reading)
    result["table"] = _table(recipe, result)
    if runtime.is_main:
        save_pruned(out / "pruned.pt", pruned, {"recipe": recipe.name, "num_classes": data.num_classes})
        result["plot"] = str(out / "stages.png") if _plot(result["pipeline"], out / "stages.png") else None
        text = json.dumps(result, indent=1, default=str)
        for path in {out / "result.json", Path(options.json_path) if options.json_path else None} - {None}:
            atomic_write(path, lambda f: f.write(text.encode()))
    return result


def load_result(path: str | Path) -> nn.Module:
    """The pruned network a run saved (``pruned.pt``): the recipe's unpruned architecture is rebuilt from the
    file's metadata (the recipes' networks are not built by a timm / torchvision name) and the pruning replayed."""
    from .configs import get_recipe

    meta = read_pruned(path).get("meta", {})
    if "recipe" not in meta or "num_classes" not in meta:
        raise RecipeError(f"{path} was not written by a recipe run (no recipe in its metadata)")
    recipe = get_recipe(meta["recipe"])
    base = apply_transform(build_model(recipe.model, int(meta["num_classes"])), recipe.transform)
    return load_pruned(path, base_model=base)


def structure_with_options(recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    """:func:`structure`, writing the JSON where ``options`` say."""
    result = structure(recipe, options.checkpoint, options.seed)
    if options.json_path:
        text = json.dumps(result, indent=1)
        atomic_write(options.json_path, lambda f: f.write(text.encode()))
    return result


