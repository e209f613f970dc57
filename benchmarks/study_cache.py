"""The cost of a whole study: a 4-target x 2-seed ``cgmed-cg`` protocol with and without the
processed-pixel cache (``image.processor_cache``) and training reuse (``cg.reuse``).

The study runs on the synthetic MAT world with a tiny random Qwen2-VL: four held-out targets in
two pairs whose Related data coincide (CT Lung Cancer and MRI Brain Cancer both train on CT Brain
Cancer + MRI Lung Cancer; X-ray Lung Diseases and CT Brain Diseases on X-ray Brain Diseases + CT
Lung Diseases), two seeds, Baseline+ and the seen test sets, as the paper's Table 3 runs them.
Each arm is a fresh process over the same world (built once, outside the clock), run
``--rounds`` times in rotating order; the table shows each arm's fastest round:

  plain         image.processor_cache=null, cg.reuse=false: every training and evaluation
                decodes and processes every image it reads
  cache         the cache in the run directory (filled by this study)
  cache warm    the cache as the "cache" arm left it (a later study, or experiment, on the same images)
  cache+reuse   the cache, and identical trainings run once (cg.reuse=true)

Printed per arm: wall time of the whole protocol, of data work (the training collator and the
evaluator's prompt and image building, where images are decoded and processed; the evaluator's
screening of unreadable images is shown apart), trainings run, cache hits and misses, and the
ratio to ``plain``. The arms' reports must be identical (the cache changes no bit, reuse no
number); the script checks it.

    python benchmarks/study_cache.py                  # 3 rounds, ~10 minutes on 2 idle CPU cores
    python benchmarks/study_cache.py --smoke          # plain and cache+reuse: 2 targets, 1 seed, 2 steps, in-process
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARMS = {  # name -> (processor cache, training reuse, cache filled beforehand)
    "plain": (False, False, False),
    "cache": (True, False, False),
    "cache warm": (True, False, True),
    "cache+reuse": (True, True, False),
}
SMOKE_ARMS = ("plain", "cache+reuse")


def targets(n: int) -> list[Any]:
    """``n`` (2 or 4) targets in pairs that share their Related data."""
    from cgmed.cg.config import CGTarget

    def mat(modality: str, area: str, task: str) -> dict[str, str]:
        return {"modality": modality, "area": area, "task": task}

    cancer = [mat("CT", "Brain", "Cancer"), mat("MRI", "Lung", "Cancer")]
    diseases = [mat("X-ray", "Brain", "Diseases"), mat("CT", "Lung", "Diseases")]
    rows = [
        CGTarget(name="ct_lung_cancer", target=mat("CT", "Lung", "Cancer"), related=cancer),
        CGTarget(name="mri_brain_cancer", target=mat("MRI", "Brain", "Cancer"), related=cancer),
        CGTarget(name="xray_lung_diseases", target=mat("X-ray", "Lung", "Diseases"), related=diseases),
        CGTarget(name="ct_brain_diseases", target=mat("CT", "Brain", "Diseases"), related=diseases),
    ]
    return rows[:n]


def study(args: argparse.Namespace, cache_on: bool, reuse: bool, cache: Path | None) -> Any:
    """The study's CGApp."""
    from cgmed.cg.config import CGApp, CGConfig, TinyBase
    from cgmed.data.imaging import ImageConfig
    from cgmed.data.source import DataConfig
    from cgmed.data.split import OptionsConfig, SplitConfig
    from cgmed.data.synth import SynthConfig
    from cgmed.eval.score import EvalConfig
    from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig

    synth = SynthConfig(
        modalities=["CT", "MRI", "X-ray"],
        areas=["Lung", "Brain"],
        images_per_subset=args.images_per_subset,
        image_size=args.image_size,
        test_fraction=0.2,
    )
    train = TrainConfig(
        max_steps=args.steps,
        per_device_batch_size=8,
        lr=2e-3,
        warmup_ratio=0.0,
        progress_bar=False,
        tensorboard=False,
        num_workers=0,  # data work in this process, where it is timed
    )
    smoke = args.smoke
    return CGApp(
        cg=CGConfig(
            targets=targets(2 if smoke else 4),
            seeds=[0] if smoke else [0, 1],
            tiny_base=TinyBase(),
            baseline_plus=not smoke,
            eval_seen=not smoke,
            reuse=reuse,
            plots=False,
        ),
        data=DataConfig(cache_dir=str(args.workdir / "world")),
        split=SplitConfig(cap_per_subset=args.cap, options=OptionsConfig(mode="rebuild", order="sorted")),
        synth=synth,
        image=ImageConfig(processor_cache=str(cache) if cache_on else None),
        model=ModelConfig(),
        train=train,
        peft=PeftConfig(),
        distributed=DistributedConfig(),
        eval=EvalConfig(batch_size=16, bootstrap=0),
    )


class Clock:
    """Seconds spent in the wrapped functions, and how often they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._originals: list[tuple[Any, str, Any]] = []

    def restore(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        self._originals.append((owner, name, original))

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, name, timed)


def folder(arm: str) -> str:
    return arm.replace(" ", "_").replace("+", "_")


def warm_up() -> None:
    """Import what a protocol imports on first use, so that no arm's clock pays for it."""
    import importlib

    for module in (
        "torch._dynamo",
        "accelerate",
        "transformers.generation.utils",
        "transformers.models.qwen2_vl.modeling_qwen2_vl",
        "cgmed.train.loop",
        "cgmed.eval.run",
        "cgmed.cg.protocol",
    ):
        importlib.import_module(module)


def run_arm(args: argparse.Namespace, arm: str) -> dict[str, Any]:
    """One arm in this process: the protocol into its own run directory; its timings."""
    import cgmed.eval.run
    import cgmed.train.loop
    from cgmed.cg.protocol import run_protocol
    from cgmed.eval.score import Scorer
    from cgmed.models.collate import Collator
    from cgmed.models.processor_cache import ProcessorCache

    warm_up()
    cache_on, reuse, warm = ARMS[arm]
    rounds = args.workdir / f"round-{args.round}"
    run_dir = rounds / folder(arm)
    # warm: the cache this round's "cache" arm filled (another study on the same images)
    cache = (rounds / folder("cache") / "processor_cache") if warm else (run_dir / "processor_cache")
    if warm and not cache.is_dir():
        raise SystemExit("the 'cache warm' arm reads the cache of the round's 'cache' arm: run that first")
    clock = Clock()
    clock.wrap(Collator, "collate", "train collate")
    clock.wrap(Scorer, "_inputs", "eval inputs")
    if hasattr(cgmed.eval.run, "_screen_images"):
        clock.wrap(cgmed.eval.run, "_screen_images", "eval screening")
    clock.wrap(cgmed.train.loop, "train", "trainings")
    counts = {"hits": 0, "misses": 0}
    original_image = ProcessorCache.image

    def counted(self: ProcessorCache, *a: Any, **kw: Any) -> Any:
        hits = self.hits
        out = original_image(self, *a, **kw)
        counts["hits" if self.hits > hits else "misses"] += 1
        return out

    ProcessorCache.image = counted
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the protocol's report: in the run directory
            doc = run_protocol(study(args, cache_on, reuse, cache), run_dir)
    finally:
        total = time.perf_counter() - start
        ProcessorCache.image = original_image
        clock.restore()
    return {
        "arm": arm,
        "total": total,
        "data": clock.seconds.get("train collate", 0.0) + clock.seconds.get("eval inputs", 0.0),
        "screening": clock.seconds.get("eval screening", 0.0),
        "trainings": clock.calls.get("trainings", 0),
        **counts,
        "report": numbers(doc),
    }


def numbers(doc: dict[str, Any]) -> list[Any]:
    """The report's accuracies per target and arm (what must not change between arms)."""
    out = []
    for row in doc.get("targets", []):
        arms = {k: v["accuracy"] for k, v in row.items() if isinstance(v, dict) and "accuracy" in v}
        out.append([row.get("target"), sorted(arms.items())])
    return out


def run_in_subprocess(args: argparse.Namespace, arm: str, round_: int) -> dict[str, Any]:
    out = args.workdir / f"round-{round_}" / f"{folder(arm)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--arm", arm, "--workdir", str(args.workdir), "--out", str(out)]
    cmd += [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("steps", "image_size", "images_per_subset", "cap", "round")
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_rounds(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every arm ``args.rounds`` times, each round in another order (``cache warm`` right after
    ``cache``, whose cache it reads); per arm its fastest round, the one least slowed down by
    other work on the machine."""
    units = [["plain"], ["cache", "cache warm"], ["cache+reuse"]]
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        args.round = r
        for unit in units[r % len(units) :] + units[: r % len(units)]:
            for arm in unit:
                runs[arm].append(run_in_subprocess(args, arm, r))
    return [min(runs[arm], key=lambda row: row["total"]) for arm in ARMS]


def make_world(args: argparse.Namespace) -> None:
    """The synthetic world every arm reads, generated once before any clock starts."""
    from cgmed.data.build import resolve_root

    app = study(args, False, False, None)
    resolve_root(app.data, app.synth)


def print_table(rows: list[dict[str, Any]]) -> None:
    plain = rows[0]
    print(
        f"{'arm':<12} {'total s':>8} {'data s':>7} {'screen s':>8} {'trainings':>9} {'hits':>6} {'misses':>6}  total/plain  data/plain"
    )
    for r in rows:
        print(
            f"{r['arm']:<12} {r['total']:8.1f} {r['data']:7.1f} {r['screening']:8.1f} {r['trainings']:9d} "
            f"{r['hits']:6d} {r['misses']:6d}  {r['total'] / plain['total']:11.2f}  "
            f"{r['data'] / plain['data']:10.2f}"
        )
    same = all(r["report"] == plain["report"] for r in rows)
    print(f"reports identical across arms: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit("the arms' reports differ: the cache or reuse changed a result")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="2 targets, 1 seed, 2 steps, in one process")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per arm (default 12; smoke 2)"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="stored image side (default 224; smoke 56)"
    )
    parser.add_argument("--images-per-subset", type=int, default=None, help="default 60; smoke 10")
    parser.add_argument("--cap", type=int, default=None, help="split.cap_per_subset (default 40; smoke 8)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every arm, in rotating order")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = (2, 56, 10, 8) if args.smoke else (12, 224, 60, 40)
    for key, value in zip(("steps", "image_size", "images_per_subset", "cap"), defaults, strict=True):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.arm:  # a child process: one arm
        args.out.write_text(json.dumps(run_arm(args, args.arm)))
        return
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="study_cache-"))
    rounds = "1 round" if args.smoke else f"best of {args.rounds} rounds"
    print(
        f"study: {2 if args.smoke else 4} targets x {1 if args.smoke else 2} seed(s), {args.steps} steps, "
        f"{args.image_size} px images, tiny qwen2_vl, {rounds}; workdir {args.workdir}"
    )
    make_world(args)
    print_table([run_arm(args, arm) for arm in SMOKE_ARMS] if args.smoke else run_rounds(args))


if __name__ == "__main__":
    main()
