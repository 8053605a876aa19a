"""Helpers shared by the tests: small models, seeded batches, state snapshots (`from conftest import ...`), and where
the tests' Fashion-MNIST is (``scripts/test`` provisions it; a test never skips for lack of it: the
``fashion_mnist_dir`` fixture fails, and a skip of another test for lack of it fails the run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from benchmarks.curated import build_model  # noqa: F401 - shared with the tests that import it from here
from entropy_importance.data.fashion_mnist import find_fashion_mnist

MISSING_FASHION_MNIST = ("Fashion-MNIST not found: run the tests with scripts/test, which provisions it (or set "
                         "FASHION_MNIST_ROOT to a folder holding its four IDX files)")
_data_skips: list[str] = []


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The folder the library reads Fashion-MNIST from; the test fails (never skips) when there is none."""
    found = find_fashion_mnist()
    if found is None:
        pytest.fail(MISSING_FASHION_MNIST, pytrace=False)
    return found


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember the tests skipped for lack of Fashion-MNIST (their skip reasons name it)."""
    if report.skipped and "fashion-mnist" in str(report.longrepr).lower():
        _data_skips.append(report.nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run in which tests were skipped for lack of Fashion-MNIST fails."""
    if _data_skips and find_fashion_mnist() is None and exitstatus in (pytest.ExitCode.OK,
                                                                       pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _data_skips and find_fashion_mnist() is None:
        terminalreporter.write_line(f"FAILED: {len(_data_skips)} test(s) skipped: {MISSING_FASHION_MNIST}", red=True)


def image_batches(n: int = 2, batch: int = 8, size: int = 32, classes: int = 10, seed: int = 0,
                  channels: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` seeded ``(images, labels)`` batches of random images and integer labels in ``[0, classes)``."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, channels, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def small_net() -> nn.Module:
    """conv-BN-ReLU-conv-ReLU-GAP-linear on 3-channel images, 5 classes, seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def small_resnet() -> nn.Module:
    """torchvision resnet18 with 10 classes, seeded, in eval mode."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``model``'s state dict equals the snapshot (same keys, shapes and values)."""
    now = model.state_dict()
    return now.keys() == state.keys() and all(v.shape == state[k].shape and torch.equal(v, state[k])
                                              for k, v in now.items())


class CrossStage(nn.Module):
    """A CSP stage: split, a residual block on one half, concat of both halves. Torch-Pruning 1.6 cannot infer
    the width of the residual half, fails to build its graph, and maps the split's pieces to the wrong consumers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.expand = nn.Conv2d(3, 32, 1)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.transition = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        shortcut, residual = self.expand(x).chunk(2, 1)
        residual = self.block(residual) + residual
        return self.fc(self.transition(torch.cat([residual, shortcut], 1)).mean((2, 3)))
