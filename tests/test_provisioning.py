"""Where the tests' Fashion-MNIST comes from: the library's search order ($FASHION_MNIST_ROOT, Debian's folder, the
cache), its download into the cache, ``scripts/test`` (find, else apt-get as root, else download, else one line; then
pytest), and README's two commands being exactly what CI runs."""

import gzip
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

fm = importlib.import_module("entropy_importance.data.fashion_mnist")  # the module, not the package's function

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """The IDX format written by hand: two zero bytes, type 0x08 (unsigned byte), rank, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _plant(folder: Path, seed: int, compress: bool = True, layout: str = "flat") -> dict[str, np.ndarray]:
    """Four small IDX files (5 images per split) in ``folder`` (flat, or torchvision's FashionMNIST/raw)."""
    target = folder if layout == "flat" else folder / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = {}
    for split, (images, label_file) in NAMES.items():
        _write_idx(target / images, rng.integers(0, 256, (5, 28, 28)), compress)
        labels[split] = rng.integers(0, 10, 5)
        _write_idx(target / label_file, labels[split], compress)
    return labels


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """A machine without Fashion-MNIST: no Debian folder, no $FASHION_MNIST_ROOT, an empty cache."""
    monkeypatch.setattr(fm, "FASHION_MNIST_DIRS", ())
    monkeypatch.delenv("FASHION_MNIST_ROOT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert fm.find_fashion_mnist() is None
    return tmp_path


def test_search_order_root_variable_then_debian_then_cache(no_data, monkeypatch):
    cached = _plant(fm.cache_dir(), seed=1, layout="torchvision")
    assert fm.find_fashion_mnist() == no_data / "cache" / "entropy-importance" / "fashion-mnist"
    assert fm.fashion_mnist("test").tensors[1].tolist() == cached["test"].tolist()
    debian = no_data / "debian"
    debian_labels = _plant(debian, seed=2)
    monkeypatch.setattr(fm, "FASHION_MNIST_DIRS", (str(debian),))
    assert fm.find_fashion_mnist() == debian  # before the cache
    assert fm.fashion_mnist("test").tensors[1].tolist() == debian_labels["test"].tolist()
    own = no_data / "own"
    own_labels = _plant(own, seed=3, compress=False)
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(own))
    assert fm.find_fashion_mnist() == own  # before everything
    assert fm.fashion_mnist("train").tensors[1].tolist() == own_labels["train"].tolist()


def test_missing_files_name_every_way_to_get_them(no_data):
    with pytest.raises(FileNotFoundError) as e:
        fm.fashion_mnist()
    for words in ("apt-get install dataset-fashion-mnist", "FASHION_MNIST_ROOT", "download_fashion_mnist()",
                  "scripts/test"):
        assert words in str(e.value)


def test_download_goes_to_the_cache_or_the_root_variable(no_data, monkeypatch):
    import torchvision

    calls = []

    def fake_download(root, train, download):  # torchvision's layout, as its downloader leaves it
        calls.append((root, train, download))
        _plant(Path(root), seed=4, layout="torchvision")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    assert fm.download_fashion_mnist() == fm.cache_dir() == fm.find_fashion_mnist()
    assert [c[1:] for c in calls] == [(True, True), (False, True)]
    assert fm.download_fashion_mnist() == fm.cache_dir() and len(calls) == 2  # there already: nothing downloaded
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(no_data / "mine"))
    assert fm.download_fashion_mnist() == no_data / "mine" == fm.find_fashion_mnist()

    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(OSError) as e:
        fm.download_fashion_mnist(no_data / "elsewhere")
    assert "\n" not in str(e.value) and "Error downloading train-images" in str(e.value)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)


# scripts/test's flow, with a stand-in interpreter and apt-get that record what they are asked to do

_FAKE_PYTHON = """#!/usr/bin/env bash
# -c CODE: find (exit 0 once $STATE/present exists) or download (fails unless $STATE/can-download); -m pytest ARGS
if [ "$1" = -c ]; then
  case "$2" in
    *download_fashion_mnist*)
      echo download >> "$STATE/log"
      if [ -e "$STATE/can-download" ]; then touch "$STATE/present"; exit 0; fi
      echo 'Traceback (most recent call last):' >&2
      echo 'OSError: Fashion-MNIST could not be downloaded into /x (URLError: no network)' >&2; exit 1;;
    *find_fashion_mnist*) [ -e "$STATE/present" ];;
  esac
else
  echo "pytest ${*:3}" >> "$STATE/log"
fi
"""
_FAKE_APT = """#!/usr/bin/env bash
echo "apt-get $*" >> "$STATE/log"
if [ "$1" = install ] && [ -e "$STATE/apt-works" ]; then touch "$STATE/present"; fi
"""


def _run_script(tmp_path, *flags: str, args=("-x", "-q")) -> tuple[subprocess.CompletedProcess, list[str]]:
    state, bin_dir = tmp_path / "state", tmp_path / "bin"
    state.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python", _FAKE_PYTHON), ("apt-get", _FAKE_APT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for flag in flags:
        (state / flag).touch()
    env = {**os.environ, "STATE": str(state), "PYTHON": str(bin_dir / "python"),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(ROOT / "scripts" / "test"), *args], capture_output=True, text=True, timeout=60,
                          env=env)
    log = (state / "log").read_text().splitlines() if (state / "log").exists() else []
    return proc, log


def test_script_runs_pytest_with_its_arguments_when_the_data_is_there(tmp_path):
    proc, log = _run_script(tmp_path, "present")
    assert proc.returncode == 0, proc.stderr
    assert log == ["pytest -x -q"] and proc.stderr == ""


def test_script_installs_the_debian_package_as_root(tmp_path):
    proc, log = _run_script(tmp_path, "apt-works")
    assert proc.returncode == 0, proc.stderr
    if os.geteuid() == 0:
        assert log == ["apt-get update -qq", "apt-get install -y -qq dataset-fashion-mnist", "pytest -x -q"]
    else:  # no apt-get without root: the download is next
        assert log == ["download"]


def test_script_downloads_when_apt_cannot_help(tmp_path):
    proc, log = _run_script(tmp_path, "can-download")
    assert proc.returncode == 0, proc.stderr
    assert log[-2:] == ["download", "pytest -x -q"] and all(line.startswith("apt-get") for line in log[:-2])


def test_script_stops_with_one_line_saying_how_to_get_the_data(tmp_path):
    proc, log = _run_script(tmp_path)
    assert proc.returncode == 2 and not any(line.startswith("pytest") for line in log)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("scripts/test: the tests need Fashion-MNIST and it could not be provisioned")
    assert "URLError: no network" in last and "apt-get install dataset-fashion-mnist" in last
    assert "FASHION_MNIST_ROOT" in last and "Traceback" not in proc.stderr


def test_script_with_the_real_interpreter_finds_the_data_and_hands_over_to_pytest(fashion_mnist_dir):
    proc = subprocess.run([str(ROOT / "scripts" / "test"), "--version"], capture_output=True, text=True,
                          timeout=120, cwd="/", env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    assert "pytest" in proc.stdout + proc.stderr


def _commands(page: str) -> list[str]:
    """The bash blocks of the "Two commands" / "Getting started" section, up to the next heading."""
    text = (ROOT / page).read_text()
    section = re.search(r"^## (?:Two commands|Getting started)\n(.*?)(?=^## |\Z)", text, re.S | re.M).group(1)
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_ci_runs_exactly_the_two_documented_commands_and_provisions_nothing_itself():
    readme = _commands("README.md")
    setup, tests = readme[0], readme[1]
    assert _commands("docs/index.md")[:2] == [setup, tests]
    install = setup.rpartition(" && ")[0]  # command 1 without its run of the main job
    assert install == 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]"'
    assert tests.startswith("scripts/test")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    lines = [line for line in ci if line and not line.startswith("#")]
    assert install in lines and tests in lines and lines.index(install) < lines.index(tests)
    assert not any(word in line for line in lines for word in ("apt-get", "fashion", "FASHION", "download"))


def test_without_the_data_tests_fail_and_never_skip_silently(tmp_path):
    """On a machine without Fashion-MNIST (a plugin hides the Debian folder; no root variable, an empty cache): a
    test that reads it fails with the way to get it, and a run in which a test skipped for lack of it fails."""
    (tmp_path / "hide_fashion_mnist.py").write_text(
        "import importlib\n"
        "importlib.import_module('entropy_importance.data.fashion_mnist').FASHION_MNIST_DIRS = ()\n")
    planted = tmp_path / "planted_test.py"  # outside tests/: tests/conftest.py is loaded as a plugin below
    planted.write_text("import pytest\n\n\n"
                       "@pytest.mark.skipif(True, reason='needs dataset-fashion-mnist')\n"
                       "def test_skips_for_lack_of_data():\n    pass\n\n\n"
                       "def test_unrelated():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "FASHION_MNIST_ROOT"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join(map(str, (tmp_path, ROOT))))
    runs = (([], ["tests/test_real_data.py::test_reader_matches_known_labels"], "1 error"),
            (["-p", "conftest"], [str(planted)], "1 passed, 1 skipped"))
    for plugins, tests, outcome in runs:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "hide_fashion_mnist", *plugins, "-q",
                               "-p", "no:cacheprovider", *tests], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**env, "PYTHONPATH": env["PYTHONPATH"] + (
                                  os.pathsep + str(ROOT / "tests") if plugins else "")})
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert outcome in proc.stdout and "run the tests with scripts/test" in proc.stdout, proc.stdout[-2000:]
