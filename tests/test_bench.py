"""The benchmark scripts run (a smoke test at tiny width: the numbers they print for issue 7 come from
full-width runs, docs/speed.md). A broken import or option would otherwise show only when someone
re-runs them."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_script(name: str, *args: str, timeout: int = 300) -> str:
    """The stdout of ``bench/<name> <args>``, which must exit 0 (else its stderr's end is shown)."""
    done = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def run_bench(*args: str) -> str:
    return run_script("train_step.py", "--widths", "4", "--size", "128", "--batch", "2", "--steps", "1",
                      "--warmup", "0", "--threads", "1", *args)


def test_train_step_bench_prints_one_json_row_per_width():
    row = json.loads(run_bench("--json").strip().splitlines()[-1])
    assert (row["width"], row["batch"], row["size"], row["generator"]) == (4, 2, 128, "fast")
    assert row["s_per_it_median"] > 0 and row["peak_gb"] > 0


def test_train_step_bench_interleaves_the_authors_step_and_ours():
    out = run_bench("--interleaved")
    assert out.startswith("# machine: ")
    assert "| 1 |" in out and "ratio median" in out



def test_train_step_summary_takes_the_middle_of_an_even_number_of_rounds(monkeypatch):
    """Six rounds have two middle values: the median is their mean (it used to print the upper one)."""
    monkeypatch.syspath_prepend(str(BENCH))  # train_step imports generator_speed
    summary = _bench_module("train_step").interleaved_summary
    line = summary({"reference": [12.0, 8.0, 9.0, 10.0, 9.0, 9.0], "fast": [6.0, 5.0, 6.0, 5.0, 4.5, 6.0]})
    # ratios 2.0, 1.6, 1.5, 2.0, 2.0, 1.5: middle pair 1.6 and 2.0; the times' middle pairs 9, 9 and 5, 6
    assert line == "median: authors' 9.00 s, ours 5.50 s; ratio median 1.80× (range 1.50–2.00×)"

def run_generator_speed(mode: str, repeats: int = 1) -> str:
    """bench/generator_speed.py in ``mode`` (--parts, --ops, --interleaved) at 256², width 4, 1 thread."""
    return run_script("generator_speed.py", mode, "--sizes", "256", "--width", "4", "--repeats", str(repeats),
                      "--threads", "1")


def test_generator_speed_parts_add_up_to_the_forward():
    rows = {}
    for line in run_generator_speed("--parts").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| 256²") and len(cells) >= 3:
            rows[cells[0]] = [float(c) for c in cells[1:]]
    parts = [label for label in rows if label != "total"]
    assert {"encoders (2 streams)", "decoders (2 streams)", "CFA: RAL", "CFA: MSFA"} <= set(parts)
    for column in range(2):  # reference, fp32: every timed part took time, and the parts sum to the total
        assert all(rows[label][column] > 0 for label in ("encoders (2 streams)", "decoders (2 streams)", "CFA: RAL"))
        assert abs(sum(rows[label][column] for label in parts) - rows["total"][column]) < 0.5  # rounding of 8 cells to 0.1 ms
    # the authors' computation runs the projection heads on every call, as their code does; the fast path skips them
    assert rows["projection heads"][0] > 0 and rows["projection heads"][1] == 0


def test_generator_speed_ops_time_and_count_the_convolutions():
    tables: dict[str, dict[str, list[str]]] = {}
    for line in run_generator_speed("--ops").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| 256², "):
            rows = tables.setdefault(cells[0].split(", ")[1], {})
        elif line.startswith("| ") and not line.startswith("|---"):
            rows[cells[0]] = cells[1:]
    from ctsdg.cpu import bf16_allowed

    # bf16 is timed where this CPU has native bf16 kernels, and left out (with the reason) where it has not
    assert set(tables) == ({"reference", "fp32", "bf16"} if bf16_allowed() else {"reference", "fp32"})
    for rows in tables.values():
        ms = {label: float(cells[0]) for label, cells in rows.items()}
        assert ms["convolutions (oneDNN)"] > 0
        assert abs(sum(v for k, v in ms.items() if k != "total") - ms["total"]) < 0.3  # 3 cells rounded to 0.1 ms
    # The profiler's count of the reference's convolutions is the FLOP counter's count of its whole
    # forward (at width 4 it is all convolutions: RAL as a convolution, no matrix product).
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ctsdg import Generator, ModelConfig

    gen = Generator(ModelConfig(base_width=4)).eval()
    inputs = (torch.zeros(1, 3, 256, 256), torch.zeros(1, 2, 256, 256), torch.ones(1, 1, 256, 256))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        gen(*inputs, reference=True)
    counted = float(tables["reference"]["convolutions (oneDNN)"][2])
    assert abs(counted - counter.get_total_flops() / 1e9) < 0.006  # the table rounds to 0.01 GFLOP


def _bench_module(name: str):
    """bench/<name>.py imported as a module (the bench folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grain_goes_into_the_hole_only_at_the_spread_of_the_ring():
    import numpy as np

    add_grain = _bench_module("grain_lpips").add_grain
    rng = np.random.default_rng(1)
    picture = np.clip(128 + rng.normal(0, 6, (96, 96, 3)), 0, 255).round().astype(np.uint8)  # grainy known part
    hole = np.zeros((96, 96), bool)
    hole[32:64, 32:64] = True
    pred = picture.copy()
    pred[hole] = 128  # a smooth fill
    ring = np.zeros_like(hole)
    ring[16:80, 16:80] = True
    ring &= ~hole
    residual_spread = []
    for c in range(3):  # the ring's own high-pass spread, as the script measures it
        from scipy import ndimage

        r = (pred[..., c] - ndimage.gaussian_filter(pred[..., c].astype(float), 1))[ring]
        residual_spread.append(1.4826 * np.median(np.abs(r - np.median(r))))
    np.testing.assert_array_equal(add_grain(pred, hole, 0.0, 16, np.random.default_rng(0)), pred)
    for k in (0.5, 1.0):
        out = add_grain(pred, hole, k, 16, np.random.default_rng(0))
        np.testing.assert_array_equal(out[~hole], pred[~hole])  # the known pixels are untouched
        added = out[hole].astype(float) - pred[hole]
        for c in range(3):
            assert abs(added[:, c].std() / (k * residual_spread[c]) - 1) < 0.25
    flat = np.full_like(pred, 90)
    np.testing.assert_array_equal(add_grain(flat, hole, 1.0, 16, np.random.default_rng(0)), flat)  # no grain, none added


def test_per_photo_margins_take_the_best_baseline_of_each_pair(tmp_path):
    module = _bench_module("per_photo")
    header = "method,index,image,mask,hole_ratio,bucket,bin,psnr,ssim,l1,lpips_alex,mse\n"
    coffee, rocket = "val/skimage__coffee.png", "val/skimage__rocket.png"
    rows = [  # method, pair, image, bucket, SSIM, LPIPS
        ("model", 0, coffee, "0-20%", 0.9, 0.10), ("telea", 0, coffee, "0-20%", 0.8, 0.12),
        ("ns", 0, coffee, "0-20%", 0.7, 0.08),  # the best baseline on LPIPS here: the model loses by 0.02
        ("model", 1, rocket, "20-40%", 0.9, 0.20), ("telea", 1, rocket, "20-40%", 0.95, 0.25),
        ("ns", 1, rocket, "20-40%", 0.9, 0.30),
        ("model", 2, rocket, "40-60%", 0.5, 0.9), ("telea", 2, rocket, "40-60%", 0.5, 0.1),  # bucket not asked
    ]
    csv_file = tmp_path / "per_pair.csv"
    csv_file.write_text(header + "".join(f"{m},{i},{img},m.png,0.1,{b},x,20,{ssim},0.1,{lp},0.01\n"
                                         for m, i, img, b, ssim, lp in rows))
    lpips = module.margins([str(csv_file)], "model", ["telea", "ns"], "lpips_alex", ["0-20%", "20-40%"])
    assert sorted((p, b, round(m, 6)) for p, b, m in lpips) == [("coffee", "0-20%", 0.02), ("rocket", "20-40%", -0.05)]
    ssim = module.margins([str(csv_file)], "model", ["telea", "ns"], "ssim", ["0-20%", "20-40%"])  # higher is better
    assert sorted((p, round(m, 6)) for p, _, m in ssim) == [("coffee", -0.1), ("rocket", 0.05)]


def test_bf16_split_holds_bf16_values_that_sum_to_within_2_to_the_minus_16():
    import torch

    split = _bench_module("split_bf16_probe").split
    t = torch.randn(10_000) * torch.logspace(-3, 3, 10_000)
    hi, lo = split(t)
    assert hi.dtype == lo.dtype == torch.float32
    assert torch.equal(hi, hi.bfloat16().float()) and torch.equal(lo, lo.bfloat16().float())
    rel = ((t.double() - hi.double() - lo.double()).abs() / t.double().abs()).max().item()
    assert 0 < rel <= 2.0**-16
    assert ((t - hi).abs() / t.abs()).max().item() > 2.0**-10  # hi alone is far coarser


def test_bundled_bar_checks_each_line_against_the_best_rival(tmp_path):
    module = _bench_module("bundled_bar")
    summary = tmp_path / "summary.csv"
    rows = [  # method, bucket, PSNR, SSIM, LPIPS
        ("model", "0-20%", 30.0, 0.95, 0.050), ("telea", "0-20%", 29.0, 0.94, 0.049),
        ("ns", "0-20%", 29.5, 0.96, 0.052), ("patchmatch", "0-20%", 30.5, 0.93, 0.030),
        ("model", "20-40%", 25.0, 0.87, 0.140), ("telea", "20-40%", 24.0, 0.86, 0.145),
        ("ns", "20-40%", 24.5, 0.85, 0.141), ("patchmatch", "20-40%", 24.9, 0.84, 0.100),
        ("model", "40-60%", 9.0, 0.1, 0.9),  # not a bucket of the bar
    ]
    summary.write_text("method,scheme,bucket,n,psnr,ssim,l1,lpips_alex\n"
                       + "".join(f"{m},paper,{b},10,{p},{s},0.01,{lp}\n" for m, b, p, s, lp in rows)
                       + "model,10,0-10%,5,1,0.1,0.01,0.9\n")  # another scheme: ignored
    table = module.read_summary(summary)
    assert set(table["model"]) == {"0-20%", "20-40%"}
    lines = {(b, metric): (rival, passed) for b, metric, _, _, rival, passed in module.bar_lines(table, "model")}
    assert lines == {
        ("0-20%", "psnr"): ("patchmatch", False),  # PatchMatch counts for PSNR and SSIM...
        ("0-20%", "ssim"): ("ns", False),
        ("0-20%", "lpips_alex"): ("telea", False),  # ...but not for LPIPS, where it would win
        ("20-40%", "psnr"): ("patchmatch", True),
        ("20-40%", "ssim"): ("telea", True),
        ("20-40%", "lpips_alex"): ("ns", True),
    }



def test_the_probe_line_says_when_the_threads_do_not_scale():
    """Two vCPUs that share a core with another guest run the probe hardly faster than one: the header
    says so, since every time in that run is slower than the CPU's."""
    probe_line = _bench_module("generator_speed").probe_line
    shared = probe_line({"fp32": 103.0, "fp32_one_thread": 96.0, "bf16": 201.0}, 2)
    assert "103 GFLOP/s fp32 (96 on one thread: ×1.07 on 2)" in shared and "201 GFLOP/s bf16" in shared
    assert "only ×1.07 as fast as one" in shared
    scaling = probe_line({"fp32": 188.0, "fp32_one_thread": 97.0, "bf16": 376.0}, 2)
    assert "×1.94 on 2" in scaling and "only" not in scaling
    assert probe_line({"fp32": 97.0}, 1) == ("# one 3x3 convolution (128->128, 128², channels-last) runs at "
                                             "97 GFLOP/s fp32 and bf16 not measured here")

def test_generator_speed_interleaved_gives_the_ratio_round_by_round():
    times = {"reference": {"wall": [2.0, 3.0, 2.4]}, "fp32": {"wall": [1.0, 1.5, 0.6]}}
    ratios = _bench_module("generator_speed").round_ratios(times, "fp32")
    assert ratios == [2.0, 2.0, 4.0]  # each round against its own reference
    rows = {}
    for line in run_generator_speed("--interleaved", repeats=2).splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| 256² |"):
            rows[cells[1]] = cells
    assert {"reference", "fp32"} <= set(rows)
    assert rows["reference"][6] == "1.00x (1.00-1.00)"
    median, spread = rows["fp32"][6].split(" ", 1)
    low, high = (float(v.rstrip("x")) for v in spread.strip("()").split("-"))
    assert 0 < low <= float(median.rstrip("x")) <= high


def test_machine_line_names_the_instruction_set_limits_it_ran_under():
    """The AVX2 measurements of docs/speed_history.md ("A tenth look") run on an AVX-512 CPU with torch's,
    oneDNN's and MKL's instruction sets limited by environment variables; the header must say so."""
    limits = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    unlimited = {k: v for k, v in os.environ.items() if k not in limits}
    code = "import generator_speed as g; print(g.machine_line(g.machine()))"
    lines = []
    for env in ({**unlimited, **limits}, unlimited):
        done = subprocess.run([sys.executable, "-c", code], cwd=BENCH, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        lines.append(done.stdout.strip())
    limited, plain = lines
    assert limited.startswith("# machine: ") and plain.startswith("# machine: ")
    assert ("instruction sets limited by ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "
            "MKL_ENABLE_INSTRUCTIONS=AVX2") in limited
    assert "limited by" not in plain
    if platform.machine() in ("x86_64", "AMD64"):
        assert "torch sees AVX2" in limited


def test_load_line_says_other_work_shared_the_cores_only_when_the_load_was_above_the_threads():
    """The table's last line used to say "other work shared the cores" after every run, at any load."""
    code = ("import os, generator_speed as g\n"
            "for load in (1.73, 2.0, 2.4):\n"
            "    os.getloadavg = lambda load=load: (load, 0.0, 0.0)\n"
            "    print(g.load_line(2))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    quiet, level, busy = done.stdout.strip().splitlines()
    assert quiet == "# load average at end 1.73"
    assert level == "# load average at end 2.00"
    assert busy == "# load average at end 2.40 (above the 2 threads: other work shared the cores)"


def test_ab_times_each_value_of_a_setting_in_turn_and_restores_it():
    """`--ab NAME VALUE ...`: the same-process A/B that docs/speed.md's kept and rejected ideas cite."""
    lines = run_script("generator_speed.py", "--ab", "ctsdg.winograd.ENABLED", "True", "False", "--sizes", "256",
                       "--width", "4", "--repeats", "2", "--threads", "1").splitlines()
    assert lines[0].startswith("# machine: ") and "A/B of ctsdg.winograd.ENABLED" in lines[0]
    rows = [line.split(" | ") for line in lines if line.startswith("| 256² |")]
    assert [row[1] for row in rows] == ["True", "False"]
    first_median, first_spread = rows[0][4].rstrip(" |").split(" ", 1)
    assert float(first_median) == 1.0 and first_spread == "(1.000-1.000)"  # the first value against itself
    assert 0 < float(rows[1][2]) <= float(rows[1][3])  # best <= median
    code = ("import generator_speed as g, ctsdg.winograd as w\n"
            "times = g.ab(256, 1, 1, 'ctsdg.winograd.SCRATCH_ELEMENTS', [4096, 1 << 20], width=4)\n"
            "print(len(times), [len(t['wall']) for t in times.values()], w.SCRATCH_ELEMENTS)")
    done = subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "2 [1, 1] 2097152"  # restored to the default
    bad = subprocess.run([sys.executable, str(BENCH / "generator_speed.py"), "--ab", "ctsdg.winograd.NO_SUCH",
                          "1", "2", "--sizes", "256", "--width", "4"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "has no attribute 'NO_SUCH'" in bad.stderr


def test_winograd_probe_times_the_transforms_as_one_product_and_as_halves(capsys):
    """`bench/winograd_probe.py --transform`, the numbers behind the input transform's split (docs/speed_history.md,
    "An eleventh look"): one row per layer and thread count, the halves giving the same numbers."""
    import torch

    module = _bench_module("winograd_probe")
    module.SHAPES = [(128, 128, 32), (64, 64, 64)]  # the second is too narrow for Winograd: no row
    module.COLUMNS = (256, 1024)
    threads = torch.get_num_threads()
    module.transform(3)
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ") for line in out if line.startswith("| 128→128")]
    assert [row[2] for row in rows] == ["1", "2"]
    assert all(row[5] == "yes" and float(row[3]) > 0 and float(row[4]) > 0 for row in rows)
    sweep = [line.strip("| ").split(" | ") for line in out if line.startswith(("| 256 |", "| 1024 |"))]
    assert [row[0] for row in sweep] == ["256", "1024"] and all(float(row[1]) > 0 for row in sweep)


def test_winograd_probe_training_times_each_layer_with_the_transforms_split_and_unsplit(capsys):
    """`bench/winograd_probe.py --training`: forward and backward of each trained layer by oneDNN, by
    Winograd, and by Winograd with its 36-row transforms as one product (the knob restored afterwards)."""
    from ctsdg import winograd

    module = _bench_module("winograd_probe")
    module.TRAINING_SHAPES = [(3, 16, 8, 12, True, "small 3×3"), (4, 8, 16, 9, False, "small 4×4, D frozen")]
    module.training(2)
    assert winograd.SPLIT_INPUT_TRANSFORM is True
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 3×3") or
            line.startswith("| 4×4")]
    assert [row[0] for row in rows] == ["| 3×3 16→8, 12² (small 3×3)", "| 4×4 8→16, 9² (small 4×4, D frozen)"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 and float(row[3]) > 0 for row in rows)
    assert len(rows[0][4].split(", ")) == 3 and len(rows[1][4].split(", ")) == 2  # the weight's gradient where asked
    assert all(float(e) < 1e-4 for row in rows for e in row[4].split(", "))
    seen = []
    module.split_ratio(3, lambda: seen.append(winograd.SPLIT_INPUT_TRANSFORM))
    assert seen == [False, True] * 6 and winograd.SPLIT_INPUT_TRANSFORM is True  # 3 warm-up rounds, restored

    def fails():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        module.split_ratio(2, fails)
    assert winograd.SPLIT_INPUT_TRANSFORM is True



def _table_rows(out: str, first_cell: str) -> list[list[str]]:
    return [line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith(f"| {first_cell} ")]


def test_bf16_error_bench_states_the_error_of_the_bundled_model_per_photo():
    """`bench/bf16_error.py` (the bf16 error the docs state): one row per photo, well under 1/255."""
    from ctsdg import cpu

    if not cpu.bf16_allowed():
        pytest.skip("bf16 is refused on this CPU (no native bf16 kernels), so is its error bench")
    out = run_script("bf16_error.py", "--sizes", "128")
    rows = [row for photo in ("astronaut", "chelsea", "coffee", "rocket") for row in _table_rows(out, photo)]
    assert [row[1] for row in rows] == ["128²"] * 4
    assert all(0 < float(cell.removesuffix("/255")) < 1 for row in rows for cell in row[2:])


def test_blend_bench_times_the_poisson_blend():
    rows = _table_rows(run_script("blend.py", "--sides", "128", "--ratios", "0.2", "--repeats", "1"), "128")
    assert len(rows) == 1 and rows[0][1] == "0.20" and float(rows[0][3]) > 0


def test_inference_bench_times_the_inpainter():
    out = run_script("inference.py", "--base-width", "4", "--sizes", "128", "--strategies", "original",
                      "--backends", "torch-fp32", "--repeats", "1", "--blend", "none")
    rows = _table_rows(out, "128x128")
    assert [row[1:3] for row in rows] == [["original", "torch-fp32"]] and float(rows[0][3]) > 0


def test_ral_backward_bench_compares_ours_with_the_authors():
    out = run_script("ral_backward.py", "--channels", "8", "--side", "16", "--repeats", "1")
    assert _table_rows(out, "ours") and _table_rows(out, "authors")
    assert float(out.split("max |∂x ours − ∂x authors'| = ")[1].split()[0]) < 1e-5


def test_serve_load_bench_gets_a_png_or_a_429_for_every_request():
    out = run_script("serve_load.py", "--clients", "2", "--duration", "2", "--size", "128")
    assert "every response a correct PNG or a 429: yes" in out


def test_winograd_probe_bf16_times_each_layer_fused_and_in_bands(capsys):
    """`bench/winograd_probe.py --bf16`: per layer oneDNN's bf16 convolution, F(2×2, 3×3) in bf16 (fused where it
    applies) and in bands, their errors, and whether the fast path takes it; the settings restored."""
    import torch

    from ctsdg import cpu, winograd, winograd_native

    if winograd_native.kernels() is None or not cpu.has_fast_bf16():
        pytest.skip("needs the C kernels and oneDNN's bf16 kernels")
    module = _bench_module("winograd_probe")
    module.SHAPES = [(128, 128, 32), (16, 8, 16)]
    amx = winograd._cpu_with_amx
    module.bf16(2)
    assert winograd.FUSED_BF16 is True and winograd._cpu_with_amx is amx
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 128→128") or
            line.startswith("| 16→8")]
    assert len(rows) == 2 and all(float(row[1]) > 0 and float(row[3]) > 0 for row in rows)
    fused = winograd_native.fused_available(torch.bfloat16)
    assert rows[0][2].endswith("(fused)" if fused else "(bands)") and rows[1][2].endswith("(bands)")
    assert all(float(row[5].rstrip(" %")) < 3 * float(row[4].rstrip(" %")) for row in rows)  # within 3× direct's
    assert rows[1][6].startswith("no")  # 16→8: too narrow for the fast path
