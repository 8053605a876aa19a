"""``python -m recipes list | run NAME [...] | structure-all | smoke-all``: the papers' recipes from the command line.

Bad input (an unknown recipe, missing data, a checkpoint of another architecture, CUDA where there is none) is one
line on stderr and exit code 2, before anything is trained or written.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from entropy_importance.serialization import atomic_write

from .configs import RECIPES, get_recipe
from .models import RecipeError
from .runner import RunOptions, run, structure_with_options
from .voc import write_synthetic_voc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the recipes and the papers' numbers")
    r = sub.add_parser("run", help="run one recipe")
    r.add_argument("name", help="a recipe name (python -m recipes list)")
    r.add_argument("--data-dir", help="where the dataset is (CIFAR-10: cifar-10-batches-py/ inside; ImageNet: "
                                      "train/ and val/ image folders)")
    r.add_argument("--download", action="store_true", help="download CIFAR-10 (torchvision) if it is missing")
    r.add_argument("--dataset", choices=["cifar10", "imagenet", "fashion-mnist"],
                   help="another dataset than the recipe's (fashion-mnist: the local Debian package)")
    r.add_argument("--checkpoint", help="the base network's weights (a state dict) instead of training it")
    r.add_argument("--pretrained", action="store_true", help="torchvision's ImageNet weights as the base network")
    r.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process under torchrun)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--structure-only", action="store_true",
                      help="prune random (or --checkpoint) weights without data; print params and MACs")
    mode.add_argument("--smoke", action="store_true",
                      help="end to end on a Fashion-MNIST subset, a few CPU minutes (detection: on the small VOC "
                           "folder --data-dir gives)")
    r.add_argument("--out", help="output folder (default runs/NAME)")
    r.add_argument("--json", dest="json_path", help="also write the result as JSON here")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    for name in ("structure-all", "smoke-all"):
        a = sub.add_parser(name, help=f"every recipe, {name.split('-')[0]} mode")
        a.add_argument("--json", dest="json_path", help="write all results as JSON here")
        a.add_argument("--quiet", action="store_true")
    return p


def _list() -> None:
    def pct(v):
        return "-" if v is None else f"-{v:g} %"

    print(f"{'recipe':26s} {'pipeline':8s} {'params':>9s} {'MACs':>9s}  the paper's accuracy")
    for r in RECIPES.values():
        print(f"{r.name:26s} {r.pipeline:8s} {pct(r.claim.params):>9s} {pct(r.claim.macs):>9s}  {r.claim.accuracy}")


def _print_structure(result: dict) -> None:
    def cell(key):
        ours, theirs = result[f"{key}_reduction"], result["paper"][f"{key}_reduction"]
        text = "-" if ours is None else f"-{ours:.2f} %"
        if theirs is not None:
            text += f" (paper -{theirs:g} %, {'ok' if result['checks'][key]['within_tolerance'] else 'OFF'})"
        return text

    print(f"{result['recipe']:26s} params {result['params_before'] / 1e6:7.2f} M -> {result['params_after'] / 1e6:6.2f}"
          f" M {cell('params'):32s} MACs {cell('macs'):32s} {result['seconds']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            _list()
            return 0
        if args.command == "structure-all":
            results = [structure_with_options(r, RunOptions()) for r in RECIPES.values()]
            for result in results:
                _print_structure(result)
            _write(args.json_path, results)
            return 0 if all(r["matches_paper"] for r in results) else 1
        if args.command == "smoke-all":
            with tempfile.TemporaryDirectory() as tmp:  # the detection recipes run on a tiny synthetic VOC folder
                voc = str(write_synthetic_voc(tmp))
                results = [run(r, RunOptions(smoke=True, quiet=args.quiet,
                                             data_dir=voc if r.task == "detection" else None))
                           for r in RECIPES.values()]
            for result in results:
                print(result["table"], end="\n\n")
            _write(args.json_path, results)
            return 0
        recipe = get_recipe(args.name)
        options = RunOptions(**{k: v for k, v in vars(args).items() if k in RunOptions.__dataclass_fields__})
        if args.structure_only:
            result = structure_with_options(recipe, options)
            _print_structure(result)
            print(f"reading: {result['reading']}")
            return 0 if result["matches_paper"] else 1
        result = run(recipe, options)
        print(result["table"])
        return 0
    except (RecipeError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2


def _write(path: str | None, results: list) -> None:
    if path:
        text = json.dumps(results, indent=1, default=str)
        atomic_write(path, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    sys.exit(main())
