"""channels_last and pruning on CPU: the memory format restored after pruning, and the guard against oneDNN's crash
in the backward pass of 1x1 stride-2 convolutions with 5-15 input channels (which a pruned ResNet's shortcuts have).
The fine-tunes that could crash run in subprocesses, so that a segfault fails a test instead of killing pytest."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import entropy_importance as ei
from entropy_importance.repairs import (
    guard_strided_1x1_convs,
    memory_format_of,
    needs_nchw_guard,
    restore_memory_format,
)

ROOT = Path(__file__).resolve().parents[1]
CL = torch.channels_last


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=ROOT)


# the smallest reproduction: one layer, no pruning; 17 images on 2 threads (a batch that is not a multiple of the
# thread count), 11 input channels
MINIMAL = """
import sys, torch, torch.nn as nn
torch.set_num_threads(2)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(11, 32, 1, stride=2, bias=False)).to(memory_format=torch.channels_last)
if sys.argv[1] == "guarded":
    from entropy_importance.repairs.memory_format import guard_strided_1x1_convs
    assert guard_strided_1x1_convs(model) == ["0"]
x = torch.randn(17, 11, 32, 32).contiguous(memory_format=torch.channels_last)
for _ in range(3):
    model(x).sum().backward()
print("finished")
"""


def test_the_guard_lets_the_minimal_reproduction_finish():
    guarded = _run(MINIMAL, "guarded")
    assert guarded.returncode == 0 and "finished" in guarded.stdout, guarded.stderr[-2000:]
    unguarded = _run(MINIMAL, "unguarded")
    if unguarded.returncode == 0:
        pytest.skip(f"torch {torch.__version__} on this CPU does not crash without the guard (the oneDNN bug is "
                    "fixed or its AVX-512 kernel is not used): the guarded run above still passed")
    assert unguarded.returncode < 0 and "finished" not in unguarded.stdout  # killed by a signal (SIGSEGV / SIGABRT)


# what the benchmarks did (on ResNet-56): a channels_last CIFAR ResNet, pruned layer by layer, fine-tuned in
# channels_last between the stages with a last batch of 17 images; the stream narrowed to 11 channels feeds
# layer2.0.downsample.0 (without the guard this script dies with SIGSEGV in the first fine-tune)
PIPELINE = """
import torch, torch.nn.functional as F
from entropy_importance import create_pipeline
from entropy_importance.repairs import guard_strided_1x1_convs, memory_format_of, restore_memory_format
from recipes.cifar_models import CifarResNet
torch.set_num_threads(2)
torch.manual_seed(0)
CL = torch.channels_last
model = CifarResNet(3, num_classes=10).to(memory_format=CL)  # ResNet-20: ResNet-56's layout, 3 blocks a stage
fmt = memory_format_of(model)
assert fmt == CL
g = torch.Generator().manual_seed(0)

def finetune(m, stage):
    restore_memory_format(m, fmt)
    assert all(p.is_contiguous(memory_format=CL) for p in m.parameters() if p.dim() == 4)
    print(stage.name, "guarded", guard_strided_1x1_convs(m))
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    for batch in (16, 17):
        x = torch.randn(batch, 3, 32, 32, generator=g).contiguous(memory_format=CL)
        loss = F.cross_entropy(m(x), torch.randint(0, 10, (batch,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()

pruned, report = create_pipeline("luo-wu", importance="tp-magnitude-l2", layers=["conv1"]).run(
    model, torch.randn(1, 3, 32, 32), ratio=0.3, finetune=finetune)
print("in_channels", pruned.layer2[0].downsample[0].in_channels)
print("finished")
"""


def test_a_pruned_channels_last_resnet_finetunes_on_cpu_between_stages():
    result = _run(PIPELINE)
    assert result.returncode == 0 and "finished" in result.stdout, (result.returncode, result.stderr[-3000:])
    # int(16 x 0.7) = 11 channels of the first stream (rooted at conv1) reach the first 1x1 stride-2 shortcut
    assert "in_channels 11" in result.stdout
    assert "final guarded ['layer2.0.downsample.0']" in result.stdout  # the only layer in the crashing range


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.short = nn.Conv2d(16, 32, 1, stride=2, bias=False)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.short(self.body(x)).mean((2, 3)))


def test_pruning_returns_nchw_weights_and_restore_puts_back_channels_last():
    import torch_pruning as tp

    model = _Net().eval().to(memory_format=CL)
    assert memory_format_of(model) == CL and memory_format_of(_Net()) == torch.contiguous_format
    # prune() gives the pruned weights back in the model's format (the engine restores it)
    through_engine, _ = ei.prune(model, torch.randn(1, 3, 16, 16), "tp-magnitude-l2", ratio=0.3)
    assert memory_format_of(through_engine) == CL
    pruned = copy.deepcopy(model)
    tp.pruner.MetaPruner(pruned, torch.randn(1, 3, 16, 16), tp.importance.MagnitudeImportance(p=2),
                         pruning_ratio=0.3, ignored_layers=[pruned.fc]).step()
    # the finding: Torch-Pruning's index_select gives plain NCHW strides (no odd ones) to the pruned 3x3 weights
    w = pruned.body[3].weight
    assert w.shape == (11, 11, 3, 3) and w.is_contiguous() and not w.is_contiguous(memory_format=CL)
    assert memory_format_of(pruned) == torch.contiguous_format
    values = {n: p.detach().clone() for n, p in pruned.named_parameters()}
    params = dict(pruned.named_parameters())
    pruned.body[3].weight.grad = torch.ones(11, 11, 3, 3)  # a gradient in NCHW too
    assert restore_memory_format(pruned, CL) is pruned
    for name, p in pruned.named_parameters():
        assert p is params[name] and torch.equal(p, values[name])  # same objects, same values
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=CL), name
    assert pruned.body[3].weight.grad.is_contiguous(memory_format=CL)
    assert torch.equal(pruned.body[3].weight.grad, torch.ones(11, 11, 3, 3))
    assert memory_format_of(pruned) == CL
    restore_memory_format(pruned, torch.contiguous_format)  # and back: plain strides, 1x1 kernels included
    assert all(p.stride() == torch.empty(p.shape).stride() for p in pruned.parameters() if p.dim() == 4)


def test_restore_rejects_other_formats():
    with pytest.raises(ValueError, match="memory_format must be torch.contiguous_format or torch.channels_last"):
        restore_memory_format(_Net(), torch.preserve_format)


@pytest.mark.parametrize("conv, expected", [
    (nn.Conv2d(11, 32, 1, stride=2), True),
    (nn.Conv2d(5, 8, 1, stride=(2, 1)), True),
    (nn.Conv2d(16, 32, 1, stride=2), False),   # a multiple of 16: the unpruned ResNet-56 shortcut
    (nn.Conv2d(11, 32, 3, stride=2), False),   # not 1x1
    (nn.Conv2d(11, 32, 1, stride=1), False),   # not strided
    (nn.Linear(11, 32), False),
])
def test_which_layers_need_the_guard(conv, expected):
    assert needs_nchw_guard(conv) is expected


def test_the_guarded_layer_computes_the_same_in_nchw_and_the_guard_is_idempotent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 11, 3, padding=1), nn.Conv2d(11, 32, 1, stride=2)).to(memory_format=CL)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = model(x)
    seen = []
    assert guard_strided_1x1_convs(model) == ["1"] and guard_strided_1x1_convs(model) == ["1"]
    assert len(model[1]._forward_pre_hooks) == 1 and len(model[0]._forward_pre_hooks) == 0
    model[1].register_forward_pre_hook(lambda m, args: seen.append((args[0].stride(), m.weight.stride())))
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out, expected, atol=1e-5)
    (x_stride, w_stride), = seen
    assert x_stride == (11 * 16 * 16, 16 * 16, 16, 1) and w_stride == (11, 1, 1, 1)  # the layer ran in NCHW
    copied = copy.deepcopy(model)
    assert len(copied[1]._forward_pre_hooks) == 2  # the guard (and the recorder) travel with a copy
