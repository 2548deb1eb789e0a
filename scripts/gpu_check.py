"""A GPU check that fits a short lease: what a sweep on a GPU box costs, and whether it is deterministic.

On one GPU, within ``--budget-s`` (480 s by default), in this order:

1. the CUDA tests (``python -m pytest -m cuda`` on the test files that have them);
2. the design card's command, ``python -m audiointerp.run explainer=shap noise=white``, at full width
   on the shared ESC-10 clips (the model is trained here, ``--epochs`` epochs, into a fresh cache);
3. the same command again (the model from the cache), its files compared byte for byte with the
   first's (run logs, ``provenance.json`` and ``.hydra/`` left out): CUDA determinism;
4. a multirun over every explainer that runs on real clips, through ``hydra/launcher=joblib``
   sharing the GPU, once per precision (fp32 and bf16 at once, so two sweeps share it);
   ``shap`` is in the fp32 sweep only, since it refuses bf16 while it checks its sums;
5. a forward of 28 spectrograms through full-width Cnn14, eager against ``torch.compile``, in fp32
   and bf16, if time is left.

A step that would run past the budget is cut short or skipped, and says so; the JSON is written
whatever happens. It holds the machine, every command, s/clip per explainer and precision (a job's
seconds over its clips, the model from the cache), the sweeps' wall time, peak GPU memory (polled
with ``nvidia-smi``), the determinism verdict, and the reference paper's full sweep extrapolated
from the fp32 s/clip (its assumptions listed beside it).

``--dry-run`` runs the same steps on the CPU (``device=cpu``, a 1/32-width Cnn14, two clips per split
cut to 1 s, two masks, no examples, two explainers, no sweep report, no ``torch.compile``): a check of
the script, not of a GPU.

Usage:
    python scripts/gpu_check.py                        # on a GPU box -> docs/benchmarks/gpu_<gpu>.json
    python scripts/gpu_check.py --dry-run --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AUDIOINTERP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
WHITE_NOISE = "165058__theundecided__white-noise.wav"  # conf/noise/white.yaml's file
#: Explainers that need ground-truth evidence, which real clips do not have.
EVIDENCE_ONLY = ("oracle",)
#: The reference paper's sweep: ESC-50 fold 5 (400 clips), log-mel with these explainers under four
#: noise conditions, STFT with them on clean clips.
PAPER = {"clips": 400, "explainers": ("saliency", "gradcam", "lime", "shap"), "mel_conditions": 4,
         "stft_conditions": 1}
#: Files of a run that record how it ran rather than what it found (left out of the byte comparison).
NOT_RESULTS = {"provenance.json", "run.log"}


def all_explainers() -> list[str]:
    names = sorted(path.stem for path in (REPO_ROOT / "conf" / "explainer").glob("*.yaml"))
    return [name for name in names if name not in EVIDENCE_ONLY]


def cuda_test_files() -> list[str]:
    """The test files with a test marked ``cuda``."""
    return sorted(str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.cuda" in path.read_text())


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


# --- the machine and its GPU memory -----------------------------------------------------------------


def nvidia_smi(*fields: str) -> list[str] | None:
    """One line per GPU of ``nvidia-smi --query-gpu=fields``, or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip().splitlines() if result.returncode == 0 else None


def machine() -> dict:
    import torch

    cpu_model = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        info = Path("/proc/cpuinfo").read_text()
        cpu_model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                         cpu_model)
        flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    else:
        flags = []
    gpus = nvidia_smi("name", "memory.total", "driver_version")
    return {
        "gpus": [dict(zip(("name", "memory_total_mib", "driver"), (part.strip() for part in line.split(","))))
                 for line in gpus] if gpus else [],
        "cuda_available": torch.cuda.is_available(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cpu": cpu_model, "cpu_count": os.cpu_count(),
        "cpu_bf16": [flag for flag in flags if flag in ("avx512_bf16", "amx_bf16")],
        "python": platform.python_version(),
    }


class MemoryMonitor:
    """Polls the GPU's used memory (MiB, ``nvidia-smi``) twice a second; the peak of each phase."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and nvidia_smi("memory.used") is not None
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.baseline = self._used() if self.enabled else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        if self.enabled:
            self._thread.start()

    def _used(self) -> int | None:
        lines = nvidia_smi("memory.used")
        return int(lines[0]) if lines else None

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            used = self._used()
            if used is not None:
                self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), used)

    def stop(self) -> dict:
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=5)
        return {"polled": self.enabled, "baseline_mib": self.baseline, "peak_mib_by_step": self.peaks or None,
                "peak_mib": max(self.peaks.values()) if self.peaks else None}


# --- running commands within the budget ---------------------------------------------------------------


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)


def start(command: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(process: subprocess.Popen, deadline: float) -> tuple[int | None, bool]:
    """Wait for ``process`` until ``deadline`` (time.monotonic()); kill its process group after.
    Returns (exit status or None, whether it was cut short)."""
    try:
        return process.wait(timeout=max(1.0, deadline - time.monotonic())), False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None, True


def run_step(command: list[str], log: Path, budget: Budget, cap: float, reserve: float) -> dict:
    """Run ``command`` for at most ``cap`` seconds and never into the last ``reserve`` seconds of the budget."""
    allowed = min(cap, budget.left() - reserve)
    record = {"command": " ".join(command[2:] if command[:2] == [sys.executable, "-m"] else command), "log": str(log)}
    if allowed < 5:
        return {**record, "status": "skipped", "reason": "no time left in the budget"}
    began = time.monotonic()
    status, cut = finish(start(command, log), began + allowed)
    record.update(seconds=round(time.monotonic() - began, 1), exit_status=status)
    record["status"] = "timed_out" if cut else ("passed" if status == 0 else "failed")
    if record["status"] != "passed":
        record["log_tail"] = log.read_text(errors="replace")[-1500:]
    return record


def run_results(run_dir: Path) -> dict:
    """s/clip and what a finished run says of itself (None where it did not finish)."""
    report = run_dir / "run.json"
    if not report.is_file():
        return {"finished": False}
    summary = json.loads(report.read_text())
    provenance = json.loads((run_dir / "provenance.json").read_text())
    clips = summary["n_clips"]
    return {"finished": True, "explainer": summary["run"]["explainer"], "precision": summary.get("precision"),
            "n_clips": clips, "seconds": provenance["seconds"], "s_per_clip": round(provenance["seconds"] / clips, 3),
            "model_source": provenance["model_source"], "seconds_per_epoch": provenance.get("seconds_per_epoch"),
            "accuracy": summary.get("clean_accuracy"), "device": summary.get("device")}


def compare_runs(first: Path, second: Path) -> dict:
    """Every result file of two run folders, byte for byte."""
    def files(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root)): p for p in root.rglob("*")
                if p.is_file() and p.name not in NOT_RESULTS and ".hydra" not in p.relative_to(root).parts}

    a, b = files(first), files(second)
    differing = sorted(name for name in set(a) & set(b) if a[name].read_bytes() != b[name].read_bytes())
    only = sorted(set(a) ^ set(b))
    return {"identical": bool(a) and not differing and not only, "files_compared": len(set(a) & set(b)),
            "differing": differing[:20], "in_one_only": only[:20]}


# --- torch.compile ------------------------------------------------------------------------------


def compile_probe(device_name: str, width: float, repeats: int = 3) -> dict:
    """s per forward of 28 log-mel spectrograms (1, 64, 501), eager and compiled, fp32 and bf16."""
    import torch

    from audiointerp.models import Cnn14

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = Cnn14(n_bins=64, n_classes=50, width=width).eval().to(device)
    inputs = torch.randn(28, 1, 64, 501, device=device) * 15 - 60

    def timed(function) -> float:
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            with torch.inference_mode():
                function(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        return round(statistics.median(times), 4)

    results = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model.set_precision(dtype)
        with torch.inference_mode():
            model(inputs)  # warm-up
        eager = timed(model)
        compiled_model = torch.compile(model)
        began = time.perf_counter()
        with torch.inference_mode():
            compiled_model(inputs)
        compile_seconds = round(time.perf_counter() - began, 1)
        compiled = timed(compiled_model)
        results[precision] = {"eager_s": eager, "compiled_s": compiled, "compile_s": compile_seconds,
                              "helps": compiled < 0.9 * eager}
    return results


# --- the check ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, tiny (checks the script)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON (default docs/benchmarks/gpu_<gpu name>.json; with --dry-run, in --workdir)")
    parser.add_argument("--workdir", type=Path, default=None, help="runs, sweeps and the model cache (default: a new "
                        "temporary folder, kept)")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA / "esc50", help="ESC-50 copy with ESC-10's clips")
    parser.add_argument("--noise-dir", type=Path, default=SHARED_DATA / "noises", help=f"folder holding {WHITE_NOISE}")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (5; dry run 1)")
    parser.add_argument("--test-per-class", type=int, default=2, help="test clips per class explained (dry run: "
                        "two clips per split)")
    parser.add_argument("--explainers", default=None,
                        help="comma-separated (default: every explainer that runs on real clips; dry run saliency,random)")
    parser.add_argument("--n-jobs", type=int, default=None, help="joblib jobs per sweep on the GPU (3; dry run 1)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated; swept at the same time")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time torch.compile (default: on a GPU only)")
    parser.add_argument("--compile-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dry = args.dry_run
    args.epochs = args.epochs or (1 if dry else 5)
    args.n_jobs = args.n_jobs or (1 if dry else 3)
    args.explainers = args.explainers.split(",") if args.explainers else (["saliency", "random"] if dry else
                                                                         all_explainers())
    unknown = sorted(set(args.explainers) - set(all_explainers()))
    if unknown:
        parser.error(f"--explainers: {', '.join(unknown)} not among {', '.join(all_explainers())}")
    args.precisions = args.precisions.split(",")
    if not set(args.precisions) <= {"fp32", "bf16"}:
        parser.error(f"--precisions: expected fp32 and/or bf16, got {','.join(args.precisions)}")
    args.compile = (not dry) if args.compile is None else args.compile
    return args


def extrapolate_paper(s_per_clip: dict, shap_background: tuple[int, int]) -> dict:
    """The reference paper's full sweep from fp32 s/clip here (model training not included)."""
    ours, paper_background = shap_background
    stft_area = (257 * 313) / (64 * 501)  # STFT input bins against log-mel's: conv work scales with it
    per_clip = {}
    for name in PAPER["explainers"]:
        seconds = s_per_clip.get(name, {}).get("fp32")
        if seconds is None:
            return {"seconds": None, "reason": f"no fp32 s/clip for {name}"}
        per_clip[name] = seconds * (paper_background / ours if name == "shap" else 1.0)
    mel = sum(per_clip.values())
    total = PAPER["clips"] * (PAPER["mel_conditions"] * mel + PAPER["stft_conditions"] * stft_area * mel)
    return {"seconds": round(total), "hours": round(total / 3600, 2), **{k: list(v) if isinstance(v, tuple) else v
                                                                         for k, v in PAPER.items()},
            "assumptions": [
                "s/clip of an ESC-10 run here (whole run over its clips, model from the cache) stands for ESC-50's",
                f"shap's cost scales with its background: {paper_background} ESC-50 clips (2 per class) against "
                f"{ours} here",
                f"an STFT clip costs {stft_area:.2f}x a log-mel one (257 x 313 against 64 x 501 bins)",
                "training the two models is not included"]}


def main() -> None:
    args = parse_args()
    if args.compile_probe:
        print(json.dumps(compile_probe(args.device, args.width)))
        return
    dry = args.dry_run
    budget = Budget(args.budget_s)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    noises = work / "noises"
    noises.mkdir(exist_ok=True)
    if not (args.noise_dir / WHITE_NOISE).is_file():
        sys.exit(f"error: --noise-dir: no {WHITE_NOISE} in {args.noise_dir}")
    if not (args.data_root / "meta" / "esc50.csv").is_file():
        sys.exit(f"error: --data-root: no meta/esc50.csv in {args.data_root}")
    shutil.copyfile(args.noise_dir / WHITE_NOISE, noises / WHITE_NOISE)  # the run checks its sha256

    host = machine()
    if not dry and not host["cuda_available"]:
        sys.exit("error: torch sees no CUDA GPU here; use --dry-run to check the script on the CPU")
    gpu_name = host["gpus"][0]["name"] if host["gpus"] else "cpu"
    out = args.out or (work / "gpu_check_dry_run.json" if dry else REPO_ROOT / "docs" / "benchmarks" /
                       f"gpu_{slug(gpu_name)}.json")
    monitor = MemoryMonitor(enabled=not dry)
    clips = ["data.limit=2"] if dry else [f"data.clips_per_class={{test:{args.test_per_class}}}"]
    base = ["data=esc10", f"data.root={args.data_root.resolve()}", *clips,
            f"noise.cache_dir={noises}", f"train.cache_dir={work / 'model_cache'}", "train.cache=true",
            f"device={'cpu' if dry else 'cuda'}", f"model.width={0.03125 if dry else 1.0}",
            f"train.epochs={args.epochs}",
            *(["data.duration_s=1.0", "n_examples=0", "mask.names=[bin,topK_30]"] if dry else [])]
    runner = [sys.executable, "-m", "audiointerp.run"]
    report: dict = {
        "check": "scripts/gpu_check.py", "mode": "cpu dry run" if dry else "gpu",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:], "machine": host, "budget_s": args.budget_s, "workdir": str(work),
        "settings": {"data": f"ESC-10 ({args.data_root})", "clips": clips[0],
                     "width": 0.03125 if dry else 1.0, "epochs": args.epochs, "explainers": args.explainers,
                     "precisions": args.precisions, "n_jobs_per_sweep": args.n_jobs, "noise": "white",
                     "run_overrides": base},
        "steps": {},
    }
    steps = report["steps"]

    # 1. the CUDA tests
    monitor.phase = "cuda_tests"
    files = cuda_test_files()
    steps["cuda_tests"] = run_step([sys.executable, "-m", "pytest", "-m", "cuda", "-rs", "-p", "no:cacheprovider",
                                    *files], work / "cuda_tests.log", budget, cap=90 if not dry else 60, reserve=300)
    log = (work / "cuda_tests.log").read_text(errors="replace") if (work / "cuda_tests.log").is_file() else ""
    last = next((line for line in reversed(log.splitlines()) if re.search(r"\d+ (passed|failed|skipped|error)", line)), "")
    steps["cuda_tests"]["counts"] = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    steps["cuda_tests"]["skip_reasons"] = sorted({line.split(": ", 1)[-1] for line in log.splitlines()
                                                  if line.startswith("SKIPPED")})
    steps["cuda_tests"]["files"] = files

    # 2-3. the design card's command, twice: trains the model, then from the cache
    design = [*runner, "explainer=shap", "noise=white", *base]
    for index, name in enumerate(("design_card", "design_card_again")):
        monitor.phase = name
        run_dir = work / name
        steps[name] = run_step([*design, f"hydra.run.dir={run_dir}"], work / f"{name}.log", budget,
                               cap=200 if index == 0 else 90, reserve=150 if index == 0 else 120)
        steps[name].update(run_results(run_dir))
    if steps["design_card"].get("finished") and steps["design_card_again"].get("finished"):
        steps["determinism"] = compare_runs(work / "design_card", work / "design_card_again")
    else:
        steps["determinism"] = {"identical": None, "reason": "a design-card run did not finish"}

    # 4. joblib sweeps over every explainer and precision, all at once on the GPU: one sweep, or, with
    # shap (refused under bf16 while it checks its sums), one per precision
    monitor.phase = "sweeps"
    allowed = budget.left() - (75 if args.compile else 10)
    if "shap" in args.explainers and set(args.precisions) - {"fp32"}:
        plan = {p: ([e for e in args.explainers if not (e == "shap" and p != "fp32")], [p]) for p in args.precisions}
    else:
        plan = {"all": (args.explainers, args.precisions)}
    sweeps, processes = {}, {}
    began = time.monotonic()
    if allowed >= 20:
        for label, (names, precisions) in plan.items():
            sweep_dir = work / f"sweep_{label}"
            command = [*runner, "-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}",
                       f"explainer={','.join(names)}", f"precision={','.join(precisions)}", "noise=white", *base,
                       "n_examples=0", f"hydra.sweep.dir={sweep_dir}", *(["~hydra.callbacks.report"] if dry else [])]
            sweeps[label] = {"command": " ".join(command[2:]), "explainers": names, "precisions": precisions,
                             "dir": str(sweep_dir), "log": str(work / f"sweep_{label}.log")}
            if "shap" in args.explainers and "shap" not in names:
                sweeps[label]["left_out"] = {"shap": "refused under bf16 while it checks its sums "
                                                     "(explainer.check_additivity=false runs it)"}
            processes[label] = start(command, work / f"sweep_{label}.log")
        for label, process in processes.items():
            status, cut = finish(process, began + allowed)
            record = sweeps[label]
            record.update(exit_status=status, status="timed_out" if cut else ("passed" if status == 0 else "failed"),
                          wall_s=round(time.monotonic() - began, 1))
            record["jobs"] = {job.name: run_results(job) for job in sorted(Path(record["dir"]).glob("*explainer=*"))}
            if record["status"] != "passed":
                record["log_tail"] = Path(record["log"]).read_text(errors="replace")[-1500:]
        steps["sweeps"] = {"wall_s": round(time.monotonic() - began, 1), "sweeps": sweeps}
    else:
        steps["sweeps"] = {"status": "skipped", "reason": "no time left in the budget"}

    # 5. torch.compile, if time is left
    monitor.phase = "compile"
    if args.compile:
        probe = run_step([sys.executable, str(Path(__file__).resolve()), "--compile-probe",
                          f"--device={'cpu' if dry else 'cuda'}", f"--width={0.03125 if dry else 1.0}"],
                         work / "compile.log", budget, cap=150, reserve=5)
        if probe["status"] == "passed":
            probe["results"] = json.loads((work / "compile.log").read_text().strip().splitlines()[-1])
        steps["compile"] = probe
    else:
        steps["compile"] = {"status": "skipped", "reason": "dry run" if dry else "--no-compile"}

    # s/clip per explainer and precision: the sweeps' jobs, shap's fp32 from the second design-card run
    s_per_clip: dict[str, dict[str, float]] = {}
    for record in (steps["sweeps"].get("sweeps") or {}).values():
        for result in record.get("jobs", {}).values():
            if result.get("finished"):
                s_per_clip.setdefault(result["explainer"], {})[result["precision"]] = result["s_per_clip"]
    if steps["design_card_again"].get("finished"):
        s_per_clip.setdefault("shap", {}).setdefault("fp32", steps["design_card_again"]["s_per_clip"])
    report["s_per_clip"] = s_per_clip
    report["sweep_wall_s"] = steps["sweeps"].get("wall_s")
    report["deterministic"] = steps["determinism"].get("identical")
    report["gpu_memory"] = monitor.stop()
    n_classes = 10
    report["paper_sweep_extrapolated"] = extrapolate_paper(s_per_clip, (n_classes * 2, 50 * 2))
    report["elapsed_s"] = round(time.monotonic() - budget.started, 1)
    report["within_budget"] = report["elapsed_s"] <= args.budget_s
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"out": str(out), "elapsed_s": report["elapsed_s"], "deterministic": report["deterministic"],
                      "s_per_clip": s_per_clip, "sweep_wall_s": report["sweep_wall_s"],
                      "peak_gpu_memory_mib": report["gpu_memory"]["peak_mib"]}, indent=2))


if __name__ == "__main__":
    main()
