"""The benchmark scripts run (a smoke test at tiny width: the numbers they print for issue 7 come from
full-width runs, docs/speed.md). A broken import or option would otherwise show only when someone
re-runs them."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(*args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / "train_step.py"), "--widths", "4", "--size", "128",
                           "--batch", "2", "--steps", "1", "--warmup", "0", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_train_step_bench_prints_one_json_row_per_width():
    row = json.loads(run_bench("--json").strip().splitlines()[-1])
    assert (row["width"], row["batch"], row["size"], row["generator"]) == (4, 2, 128, "fast")
    assert row["s_per_it_median"] > 0 and row["peak_gb"] > 0


def test_train_step_bench_interleaves_the_authors_step_and_ours():
    out = run_bench("--interleaved")
    assert out.startswith("# machine: ")
    assert "| 1 |" in out and "ratio median" in out


def test_generator_speed_parts_add_up_to_the_forward():
    done = subprocess.run([sys.executable, str(BENCH / "generator_speed.py"), "--parts", "--sizes", "256",
                           "--width", "4", "--repeats", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| 256²") and len(cells) >= 3:
            rows[cells[0]] = [float(c) for c in cells[1:]]
    parts = [label for label in rows if label != "total"]
    assert {"encoders (2 streams)", "decoders (2 streams)", "CFA: RAL", "CFA: MSFA"} <= set(parts)
    for column in range(2):  # reference, fp32: every timed part took time, and the parts sum to the total
        assert all(rows[label][column] > 0 for label in ("encoders (2 streams)", "decoders (2 streams)", "CFA: RAL"))
        assert abs(sum(rows[label][column] for label in parts) - rows["total"][column]) < 0.5  # rounding of 7 cells to 0.1 ms
