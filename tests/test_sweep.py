"""scripts/sweep.py: pass-rate tables (against hand counts) and one real end-to-end run in a subprocess."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sweep.py"
spec = importlib.util.spec_from_file_location("sweep", SCRIPT)
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def test_markdown_pass_rates_and_reasons(tmp_path):
    base = sweep.BASELINE
    rows = [
        {"spec": "timm:a", "criterion": base, "ok": True, "reason": None},
        {"spec": "timm:a", "criterion": "gap-entropy", "ok": True, "reason": None, "kept": {"blocks.0.fc": "why"},
         "speed_up": 1.2},
        {"spec": "timm:b", "criterion": base, "ok": False, "reason": "IndexError: boom"},
        {"spec": "timm:b", "criterion": "gap-entropy", "ok": True, "reason": None, "speed_up": 2.5},
        {"spec": "timm:c", "criterion": base, "ok": False, "reason": "timeout > 9 s"},
        {"spec": "timm:c", "criterion": "gap-entropy", "ok": False, "reason": "timeout > 9 s"},
        {"spec": "torchvision:d", "criterion": base, "ok": True, "reason": None},
        {"spec": "torchvision:d", "criterion": "gap-entropy", "ok": True, "reason": None},
    ]
    out = tmp_path / "c.md"
    sweep.write_markdown(rows, ["gap-entropy"], out, "cmd", {"torchvision:huge": 200_000_000})
    text = out.read_text()
    timm_part = text.split("## torchvision")[0]
    assert f"| {base} | 1/3 | 33 % |" in timm_part       # a passes; b and c fail
    assert "| gap-entropy | 2/3 | 67 % |" in timm_part   # a, b pass; c timed out
    assert "IndexError: boom" in text and "kept blocks.0.fc" in text
    assert "| gap-entropy | 1/1 | 100 % |" in text.split("## torchvision")[1]
    assert "`torchvision:huge` (200 M)" in text
    assert "| ✓ 2.50x |" in timm_part and "| ✓ 1.20x |" in timm_part
    low = timm_part.split("passing below 1.5x MAC speed-up")[1]
    assert "`timm:a`" in low and "`timm:b`" not in low
    # hand-written explanations below the marker survive a rewrite
    out.write_text(text + sweep.HAND_WRITTEN + "\n## Why\nbecause\n")
    sweep.write_markdown(rows[:2], ["gap-entropy"], out, "cmd", {})
    again = out.read_text()
    assert again.endswith(sweep.HAND_WRITTEN + "\n## Why\nbecause\n") and "| gap-entropy | 1/1 | 100 % |" in again


def test_end_to_end_resume_and_retry(tmp_path):
    jsonl, md = tmp_path / "s.jsonl", tmp_path / "s.md"
    args = [sys.executable, str(SCRIPT), "--models", "timm:test_byobnet", "timm:no_such_model_xyz",
            "--criteria", "information-capacity", "--size", "32", "--timeout", "300", "--jobs", "2",
            "--jsonl", str(jsonl), "--out", str(md)]
    subprocess.run(args, check=True, capture_output=True, timeout=600)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    by = {(r["spec"], r["criterion"]): r for r in rows}
    assert len(rows) == 4
    assert by[("timm:test_byobnet", "information-capacity")]["ok"]
    assert by[("timm:test_byobnet", "information-capacity")]["speed_up"] > 1
    assert by[("timm:test_byobnet", sweep.BASELINE)]["ok"]
    # an unknown model crashes its child: both of its rows say so instead of vanishing
    assert all(not by[("timm:no_such_model_xyz", c)]["ok"] and by[("timm:no_such_model_xyz", c)]["reason"]
               .startswith("crashed") for c in (sweep.BASELINE, "information-capacity"))
    # resume: nothing is run again; retry timeouts: the crashed model is run again (and crashes again)
    subprocess.run(args + ["--resume"], check=True, capture_output=True, timeout=600)
    assert len(jsonl.read_text().splitlines()) == 4
    subprocess.run(args + ["--resume", "--retry", "timeouts"], check=True, capture_output=True, timeout=600)
    again = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(again) == 4 and [r["spec"] for r in again[-2:]] == ["timm:no_such_model_xyz"] * 2
    assert "| information-capacity | 1/2 | 50 % |" in md.read_text()
