"""The papers' procedures as pipelines: stage order, the selection module, phases, resume, bad input, and each
pipeline on CIFAR ResNet-56, VGG-16 and a timm model."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from conftest import build_model, image_batches, same_state, state_of

from entropy_importance.data import find_fashion_mnist
from entropy_importance.pipelines import create_pipeline, list_pipelines, select_maps
from recipes.cifar_models import resnet56, vgg16_bn


class Plain(nn.Module):
    """Four conv-BN-ReLU layers and a classifier (no coupling between layers: each layer is its own group)."""

    def __init__(self, dead: tuple[int, ...] = ()):
        super().__init__()
        torch.manual_seed(0)
        widths = [3, 16, 16, 16, 16]
        self.features = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())
                                        for a, b in zip(widths, widths[1:], strict=False)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, 10)
        with torch.no_grad():  # planted: these filters of the second layer output exactly 0 for every image
            for c in dead:
                self.features[1][0].weight[c].zero_()
                self.features[1][0].bias[c] = 0.0

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


X = torch.randn(1, 3, 16, 16)
CONVS = ["features.0.0", "features.1.0", "features.2.0", "features.3.0"]


@pytest.mark.parametrize("order, expected", [("forward", CONVS), ("backward", CONVS[::-1])])
def test_layer_by_layer_visits_layers_in_order_and_finetunes_after_each(order, expected):
    calls = []
    model = Plain().eval()
    pruned, report = create_pipeline("luo-wu", order=order).run(
        model, X, calibration_data=image_batches(2, 8, 16), ratio=0.25,
        finetune=lambda m, stage: calls.append((stage.kind, stage.name, m.features[0][0].out_channels)), recover=None)
    assert [name for kind, name, _ in calls] == expected + ["final"]
    assert [s.pruned for s in report.stages[:-1]] == [{n: 4} for n in expected]  # 25 % of 16, one layer a stage
    # each finetune sees the model as pruned so far: the first layer is narrowed exactly when its stage comes
    first = expected.index("features.0.0")
    assert [w for _, _, w in calls] == [16] * first + [12] * (len(expected) + 1 - first)
    assert model.features[0][0].out_channels == 16  # the caller's model is untouched


def test_selection_module_removes_exactly_the_planted_dead_maps():
    dead = (2, 5, 11)
    model = Plain(dead=dead).eval()
    pipe = create_pipeline("efp", alpha=0.5, rounds=1)
    pruned, report = pipe.run(model, X, calibration_data=image_batches(4, 8, 16), recover=None)
    assert report.stages[0].pruned == {"features.1.0": 3}  # none of the healthy layers lose a map
    kept = pruned.features[1][0].weight
    original = model.features[1][0].weight
    rows = [next(c for c in range(16) if torch.equal(original[c], w)) for w in kept]
    assert sorted(set(range(16)) - set(rows)) == list(dead)


def test_selection_module_within_a_budget_drops_the_planted_maps_first_and_ends_on_the_table():
    dead = (2, 5, 11)
    model = Plain(dead=dead).eval()
    table = {"features.1.0": 0.5, "features.3.0": 0.25}
    pruned, report = create_pipeline("efp", alpha=0.5, rounds=3).run(
        model, X, calibration_data=image_batches(4, 8, 16), ratios=table, recover=None)
    # round 1: the selection module finds the three dead maps (within the budget of 8); the last round takes the rest
    assert report.stages[0].pruned == {"features.1.0": 3}
    assert report.stages[-2].stage.name == "round 3"
    widths = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    assert widths == {"features.0.0": 16, "features.1.0": 8, "features.2.0": 16, "features.3.0": 12}
    original = model.features[1][0].weight
    rows = [next(c for c in range(16) if torch.equal(original[c], w)) for w in pruned.features[1][0].weight]
    assert not set(rows) & set(dead)


def test_select_maps_rule():
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])  # mean 2: below 0.8 x 2 = 1.6 are 0 and 1
    assert select_maps(scores, 0.8, 1) == 2 and select_maps(scores, 0.8, 4) == 1  # at least 4 kept: only 1 goes
    assert select_maps(scores, 0.1, 1) == 1 and select_maps(torch.ones(5), 0.8, 1) == 0  # 0 < 0.2; a flat layer


def _trained(steps: int = 60):
    """A small net trained on real Fashion-MNIST for a few steps, its evaluate() and calibration batches."""
    from entropy_importance.data import fashion_mnist

    x, y = fashion_mnist("train", size=28, limit=2048).tensors
    xt, yt = fashion_mnist("test", size=28, limit=512).tensors
    torch.manual_seed(0)  # the initial weights too: not whatever state earlier tests left the global generator in
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            return (m(xt).argmax(1) == yt).float().mean().item()

    return model.eval(), evaluate, list(zip(x[:256].split(64), y[:256].split(64), strict=True))


@pytest.mark.skipif(find_fashion_mnist() is None, reason="needs dataset-fashion-mnist (installed by .ci/run)")
def test_two_phase_switches_phase_where_the_accuracy_drop_crosses_the_threshold():
    model, evaluate, data = _trained()
    pipe = create_pipeline("2pfpce", threshold=0.03, step_ratio=0.15, freeze_fraction=0.0)
    pruned, report = pipe.run(model, torch.randn(1, 3, 28, 28), calibration_data=data, evaluate=evaluate,
                              speed_up=3.0, recover=None)
    base = report.metric_before
    steps = [s for s in report.stages if s.stage.kind == "step"]
    phases = [s.stage.phase for s in steps]
    # oracle from the recorded accuracies: global until (and including) the first step that drops more than 3 points
    crossing = next((i for i, s in enumerate(steps) if base - s.metric > 0.03), len(steps) - 1)
    assert phases == ["global"] * (crossing + 1) + ["layer-wise"] * (len(steps) - crossing - 1)
    assert "layer-wise" in phases and 3.0 <= report.speed_up <= 3.0 * 1.05 + 1e-9  # the last step lands on it
    assert base > 0.3  # the net did learn (3x chance): the accuracies mean something; 60 steps give 0.49-0.5


def _finetune_seeded(fail_at: int | None = None):
    """A deterministic fine-tune (seeded by the stage), which raises at stage ``fail_at``."""
    def finetune(model, stage):
        if stage.index == fail_at:
            raise KeyboardInterrupt("interrupted")
        g = torch.Generator().manual_seed(stage.index)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        for _ in range(2):
            x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
    return finetune


def test_resume_equals_an_uninterrupted_run(tmp_path):
    model, data = Plain().eval(), image_batches(2, 8, 16)
    reference, ref_report = create_pipeline("luo-wu").run(model, X, calibration_data=data, ratio=0.25,
                                                          finetune=_finetune_seeded(), recover=None)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        create_pipeline("luo-wu").run(model, X, calibration_data=data, ratio=0.25, checkpoint=ckpt,
                                      finetune=_finetune_seeded(fail_at=2), recover=None)
    resumed, report = create_pipeline("luo-wu").run(model, X, calibration_data=data, ratio=0.25, resume=ckpt,
                                                    finetune=_finetune_seeded(), recover=None)
    assert same_state(resumed, reference.state_dict())
    assert [s.stage for s in report.stages] == [s.stage for s in ref_report.stages]
    assert json.loads(report.to_json())["stages"][0]["stage"]["name"] == "features.0.0"


@pytest.mark.parametrize("name, kwargs, run_kwargs, error, message", [
    ("fec", {}, {"ratios": {"no.such.*": 0.5}}, ValueError, "matches no prunable layer"),
    ("fec", {}, {"ratios": {"features.*": 1.2}}, ValueError, r"must be in \[0, 1\)"),
    ("tang", {}, {"ratio": -0.1}, ValueError, r"ratio must be in \[0, 1\)"),
    ("2pfpce", {"max_steps": 1, "freeze_fraction": 0.0}, {"speed_up": 5.0}, RuntimeError, "target not reached"),
    ("luo-wu", {}, {"evaluate": lambda m: float("nan")}, ValueError, "evaluate\\(\\) returned nan"),
    ("luo-wu", {}, {"finetune": _finetune_seeded(fail_at=1)}, KeyboardInterrupt, "interrupted"),
    ("efp", {}, {"ratios": {"features.*": 0.5}, "ratio": 0.5}, ValueError, "give one target"),
    ("efp", {"min_keep_ratio": 0.9, "rounds": 2}, {"speed_up": 2.0}, RuntimeError,
     r"efp: target not reached \(2.0x\): even with every layer at its floor"),
])
def test_bad_input_is_one_clear_error_and_the_model_is_unchanged(name, kwargs, run_kwargs, error, message):
    model = Plain().eval()
    state = state_of(model)
    with pytest.raises(error, match=message):
        create_pipeline(name, **kwargs).run(model, X, calibration_data=image_batches(2, 8, 16), **run_kwargs,
            recover=None)
    assert same_state(model, state)


def test_registry():
    assert list_pipelines() == ["2pfpce", "efp", "fec", "luo-wu", "tang"]
    with pytest.raises(KeyError, match="unknown pipeline 'nope'; known: 2pfpce"):
        create_pipeline("nope")
    pipe = create_pipeline("efp", importance="gap-entropy", alpha=0.7)  # any registered criterion
    assert type(pipe.importance).__name__ == "GAPEntropyImportance" and pipe.alpha == 0.7


MODELS = {
    "resnet56": (lambda: resnet56(10).eval(), 32, {"layers": ["layer1.0.conv1", "layer2.0.conv2"]}),
    "vgg16": (lambda: vgg16_bn(10).eval(), 32, {"layers": ["features.0", "features.3", "features.7"]}),
    "timm-resnet18": (lambda: build_model("timm:resnet18", 32), 32, {"layers": ["layer1.0.conv1", "layer4.*"]}),
}
RUNS = {"luo-wu": ({}, {"ratio": 0.3}), "fec": ({}, {"ratio": 0.3}), "efp": ({"rounds": 1}, {}),
        "tang": ({}, {"speed_up": 1.5}), "2pfpce": ({"step_ratio": 0.2, "freeze_fraction": 0.2}, {"speed_up": 1.3})}


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("name", list(RUNS))
def test_each_pipeline_runs_on_resnet56_vgg16_and_a_timm_model(name, arch, tmp_path):
    from entropy_importance import load_pruned, save_pruned

    build, size, layer_options = MODELS[arch]
    model, x = build(), torch.randn(1, 3, size, size)
    options, target = RUNS[name]
    if name == "luo-wu":
        options = {**options, **layer_options}
    stages = []
    pruned, report = create_pipeline(name, **options).run(
        model, x, calibration_data=image_batches(2, 8, size), finetune=lambda m, s: stages.append(s),
        evaluate=lambda m: 0.0, **target, recover=None)
    assert report.params_after < report.params_before and stages[-1].kind == "final"
    if "speed_up" in target:
        assert report.speed_up >= target["speed_up"]
    assert pruned(x).shape == (1, 10)
    save_pruned(tmp_path / "p.pt", pruned)
    assert torch.equal(load_pruned(tmp_path / "p.pt", base_model=copy.deepcopy(model))(x), pruned(x))


class _Residual(nn.Module):
    """A stem and two residual blocks: stem, block1.conv2 and block2.conv2 write one residual stream (one group)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(16, 16, 3, padding=1)) for _ in range(2))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean((2, 3)))


def test_layer_by_layer_prunes_a_residual_stream_once_to_its_ratio_of_the_original_width():
    # forward order meets the stream three times (stem, blocks.0.2, blocks.1.2); at ratio 0.5 it keeps
    # int(16 * 0.5) = 8 channels, not 16 * 0.5^3 = 2 as re-pruning "its ratio of what is left" would
    torch.manual_seed(0)
    pruned, report = create_pipeline("luo-wu").run(_Residual().eval(), X, calibration_data=image_batches(2, 8, 16),
                                                   ratio=0.5, recover=None)
    assert pruned.stem.out_channels == 8 and pruned.blocks[1][2].out_channels == 8
    assert pruned.blocks[0][0].out_channels == 8 and pruned.blocks[1][0].out_channels == 8
    removed = {s.stage.name: sum(s.pruned.values()) for s in report.stages if s.stage.kind == "layer"}
    assert removed["blocks.0.2"] == 0 and removed["blocks.1.2"] == 0  # already narrowed through the stem's stage
    assert report.widths_before["stem"] == 16
