"""Run the README's commands, so that the README cannot drift from the code.

Every command of README.md's ```bash blocks is run as written, with bash, one after the other in one
fresh temporary folder (like a user's session: a later command may use what an earlier one wrote).
Python blocks whose first line names a file (``# myspace.py``) are written into that folder first.
Three explicit tables below say what is not run verbatim, and every use is printed with its reason:

* ``SKIP``: commands that cannot run here (installers, the test suite itself, a Dask scheduler, a
  package of yours);
* ``PLACEHOLDERS``: text that stands for something of yours (``/datasets/imagenet``, ``outputs/run1``,
  an abbreviated arch) and what replaces it; some make a stand-in first (a tiny ImageFolder, a search
  run, a supernet file named like the official checkpoint);
* ``FAST``: the commands of the fast subset (``--fast``) and the small settings appended to them there,
  so they finish in seconds; ``LONG``: commands that run for hours or days by design (ImageNet
  training, a supernet-evaluated search) and get small settings in every mode.

Every command runs with ``HWNAS_ASSETS_MIRROR`` set to the data mirror (no internet here), and the
cache and the user config folder inside the temporary folder. A command that fails (or runs past
``--timeout``) fails the check.

    python benchmarks/readme_check.py --fast      # the fast subset (what tests/test_readme.py runs)
    python benchmarks/readme_check.py             # every command (long: searches, pipelines, measurements)
    python benchmarks/readme_check.py --list      # how each command would be treated, and why
    python benchmarks/readme_check.py --only 'target=plan'   # only the commands matching a regex
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("HWNAS_ASSETS_MIRROR") or ROOT.parent / "shared" / "data")

#: (regex searched in the command, why it is not run)
SKIP = [
    (r"^pip install", "installs packages; the check runs against the installed hwnas"),
    (r"-m pytest", "the test suite itself (this check is part of it)"),
    (r"tcp://(scheduler|SCHEDULER|HOST)\b", "needs a running Dask scheduler and a device's worker"),
    (r"\bmypkg\.", "mypkg stands for a package of yours"),
    (r"\.\.\. ", "'...' stands for the options of the command above"),
    (r"target_samples=my_target\.csv", "my_target.csv stands for your target device's measurements"),
]

#: (text, replacement, stand-in to make first or None, why)
PLACEHOLDERS = [
    ("../shared/data", str(MIRROR), None, "the data mirror beside the project (the check runs in a temporary folder)"),
    ("/datasets/imagenet", "{tmp}/imagenet", "imagenet",
     "a stand-in ImageFolder (train/ and val/, 1000 classes of one tiny image) for ImageNet"),
    ("outputs/search/ofa_mbv3_w12-<key>", "outputs/search/ofa_mbv3_w12-key", "run",
     "<key> stands for the settings key of the main job's folder: a search run made first, in that folder"),
    ("outputs/run1", "outputs/run1", "run", "a search run made first (a small hwnas-search into that folder)"),
    ("'r224:k3e4.k5e6/...'", "{arch}", None, "'...' abbreviates the arch; a whole OFA-MBv3 arch at r224"),
    ("ofa_mbv3_d234_e346_k357_w1.2", "ofa_mbv3_d234_e346_k357_w1.2", "checkpoint",
     "the official supernet is not in the mirror: a randomly initialised supernet file of that name stands in"),
    ("runs/proxyless/supernet.pth", "runs/proxyless/supernet.pth", "proxyless_checkpoint",
     "stands for a ProxylessNAS-mobile supernet you trained: a randomly initialised one is written there first"),
    ("accuracy=supernet", "accuracy=supernet", "checkpoint",
     "checkpoint=auto takes the official supernet, not in the mirror: a randomly initialised supernet file of that name stands in"),
    ("-m hwnas.supernet.evaluate", "-m hwnas.supernet.evaluate", "checkpoint",
     "--checkpoint auto takes the official supernet, not in the mirror: a randomly initialised supernet file of that name stands in"),
    ("accuracy.path=acc_mlp.pt", "accuracy.path=acc_mlp.pt", "acc_mlp",
     "a small MLPAccuracyPredictor saved as acc_mlp.pt first (as the training section shows)"),
]

_SEARCH = "search.pop_size=8 search.n_gen=2 search.refine.passes=0 search.plot=false"
#: (regex: commands of the fast subset, what --fast appends to them). The README's space=custom search,
#: accuracy=mlp search and smoke training are left out: tests/test_plugins.py, test_acc_predictors.py and
#: test_train.py run them as written.
FAST = [
    (r"^hwnas-search .*accuracy=supernet", ""),  # small settings in every mode (LONG)
    (r"^hwnas-search latency=adapted latency.target_device=", _SEARCH),
    (r"^hwnas-search space=ofa_mbv3_w12 accuracy=ofa_predictor", _SEARCH),
    (r"^hwnas-export .*--checkpoint", "--formats torch --calib-images 4 --no-progress --top 1"),
    (r"^hwnas-export .*--all", "--formats torch --no-progress --top 1"),
    (r"^hwnas-export outputs/", "--formats torch --no-progress"),
    (r"^hwnas-profile assets\.mirror", "profile.n_samples=4 profile.progress=false"),
    (r"^hwnas-train .*imagenet", ""),
]

#: (regex, appended in every mode, why)
LONG = [
    (r"pipeline_proxyless .*accuracy\.checkpoint=", "accuracy.n_calib=4 accuracy.n_val=4 accuracy.num_workers=0 accuracy.batch_size=4 "
                                                    "search.pop_size=4 search.n_gen=1 search.refine.passes=0 samples.k=5 reduce.n_samples=4",
     "every candidate is evaluated on the supernet (2,000 calibration + 10,000 validation images each): hours on a GPU; "
     "a tiny run on the stand-in data shows that it runs"),
    (r"-m hwnas\.supernet\.evaluate .*--random", "--n-calib 4 --n-val 4 --workers 0 --batch-size 4",
     "each subnet is BN-recalibrated on 2,000 images and evaluated on all of ImageNet's validation set (a GPU's "
     "minutes per subnet): 4 images each on the stand-in data shows that it runs"),
    (r"^hwnas-search .*accuracy=supernet", "accuracy.n_calib=4 accuracy.n_val=4 accuracy.num_workers=0 accuracy.batch_size=4 "
                                           "search.pop_size=4 search.n_gen=1 search.refine.passes=0 search.plot=false",
     "a search that evaluates every candidate on the supernet (2,000 calibration + 10,000 validation images each) runs for "
     "hours on a GPU: a tiny one on the stand-in data shows that it runs"),
    (r"^hwnas-train .*imagenet", "stop_after=1 train.batch_size=2 data.num_workers=0 space.resolutions=[128] threads=1",
     "progressive shrinking on ImageNet runs for days: one step on the stand-in data shows that it starts"),
]


@dataclass
class Command:
    text: str          # as written in the README (continuation lines joined, comment removed)
    line: int          # its first line in README.md


def strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_blocks(text: str, lang: str) -> list[tuple[int, list[str]]]:
    """``(first line number, lines)`` of every fenced block of language ``lang``."""
    blocks, cur, start = [], None, 0
    for n, line in enumerate(text.splitlines(), 1):
        if cur is None and line.strip() == f"```{lang}":
            cur, start = [], n + 1
        elif cur is not None and line.strip() == "```":
            blocks.append((start, cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    return blocks


def commands(text: str) -> list[Command]:
    """The commands of the bash blocks: continuation lines joined, comments and blank lines dropped."""
    out = []
    for start, lines in readme_blocks(text, "bash"):
        buf, first = "", 0
        for i, line in enumerate(lines):
            if not buf:
                first = start + i
            line = strip_comment(line)
            if line.endswith("\\"):
                buf += line[:-1].rstrip() + " "
                continue
            buf = (buf + line.strip()).strip()
            if buf:
                out.append(Command(re.sub(r"\s+", " ", buf), first))
            buf = ""
    return out


def files(text: str) -> dict[str, str]:
    """Python blocks whose first line is ``# <name>.py``: file name -> content."""
    out = {}
    for _, lines in readme_blocks(text, "python"):
        m = re.fullmatch(r"#\s*([\w./-]+\.py)\s*", lines[0]) if lines else None
        if m:
            out[m.group(1)] = "\n".join(lines) + "\n"
    return out


def plan(cmd: str, fast: bool) -> tuple[str | None, list[str]]:
    """``(command to run or None, reasons)``: the command after the tables are applied."""
    for pat, why in SKIP:
        if re.search(pat, cmd):
            return None, [f"skipped: {why}"]
    notes = []
    for pat, tiny, why in LONG:
        if re.search(pat, cmd):
            cmd = f"{cmd} {tiny}"
            notes.append(f"appended '{tiny}': {why}")
    if fast:
        tiny = next((t for pat, t in FAST if re.search(pat, cmd)), None)
        if tiny is None:
            return None, ["not in the fast subset"]
        if tiny:
            cmd = f"{cmd} {tiny}"
            notes.append(f"fast subset: appended '{tiny}'")
    for text, _, _, why in PLACEHOLDERS:
        if text in cmd:
            notes.append(f"{text}: {why}")
    for pat, _, why in FILLED_BEFORE:
        if re.search(pat, cmd):
            notes.append(f"filled first: {why}")
    return cmd, notes


# ============================================================================ stand-ins
def _run(cmd: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def make_imagenet(tmp: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(1000):
            d = tmp / "imagenet" / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / "0.png")


def make_checkpoint(tmp: Path) -> None:
    from hwnas.spaces import create_space
    from hwnas.supernet.checkpoint import save_checkpoint
    from hwnas.supernet.elastic import ElasticMBConvNet

    save_checkpoint(tmp / "ofa_mbv3_d234_e346_k357_w1.2", {"state_dict": ElasticMBConvNet(create_space("ofa_mbv3_w12")).state_dict()})


def make_proxyless_checkpoint(tmp: Path) -> None:
    from hwnas.spaces import create_space
    from hwnas.supernet.checkpoint import save_checkpoint
    from hwnas.supernet.elastic import ElasticMBConvNet

    f = tmp / "runs" / "proxyless" / "supernet.pth"
    f.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(f, {"state_dict": ElasticMBConvNet(create_space("proxyless_mobile")).state_dict()})


def make_acc_mlp(tmp: Path) -> None:
    from hwnas.predictors.acc_mlp import MLPAccuracyPredictor
    from hwnas.spaces import create_space

    space = create_space("ofa_mbv3_w12")
    archs = space.sample(64, 0)
    MLPAccuracyPredictor(space, hidden=32, epochs=1, min_steps=20).fit(archs, [0.6 + 2e-11 * space.macs(a) for a in archs]).save(
        tmp / "acc_mlp.pt")


def fill_plan(csv_path: Path) -> None:
    """Fill a plan's latency_ms column as the user's own tools would: a plausible device (30 GMAC/s)."""
    import csv
    import json

    from hwnas.predictors.measure.plan import plan_paths
    from hwnas.spaces.io import space_from_spec

    csv_path, meta_path = plan_paths(csv_path)
    space = space_from_spec(json.loads(meta_path.read_text())["space"], meta_path)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["latency_ms"] = f"{space.macs(space.validate(r['arch'])) / 30e9 * 1e3:.3f}"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


#: what a command prints when it stops for a plan to be filled with the user's own tools (group 1: the
#: plan's CSV); the check fills that plan (:func:`fill_plan`) and runs the same command again
PLAN_FILL = re.compile(r"fill the latency_ms column of (\S+plan\.csv)")
#: (regex in the command, plan the user filled before it, why)
FILLED_BEFORE = [
    (r"latency\.target_samples=plan/plan\.csv", "plan/plan.csv",
     "the '# ... time plan/models/...' step: the plan written above is filled as your tools would (30 GMAC/s)"),
]


def make_run(tmp: Path, env: dict, timeout: float) -> None:
    import shutil

    first, other = "outputs/run1", "outputs/search/ofa_mbv3_w12-key"
    p = _run(f"hwnas-search {_SEARCH} search.budgets=[20,25] hydra.run.dir={first}", tmp, env, timeout)  # two budgets: two exports
    if p.returncode != 0:
        raise RuntimeError(f"making the stand-in run {first} failed:\n{p.stderr[-2000:]}")
    shutil.copytree(tmp / first, tmp / other)


# ============================================================================ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--fast", action="store_true", help="only the fast subset, with small settings appended")
    ap.add_argument("--list", action="store_true", help="print how each command is treated, run nothing")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per command (default 1800)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--only", default=None, help="run only the commands matching this regex (the others are listed as not run)")
    args = ap.parse_args(argv)
    text = Path(args.readme).read_text()
    cmds = commands(text)
    planned = [(c, *plan(c.text, args.fast)) for c in cmds]
    if args.only:
        planned = [(c, run, notes) if re.search(args.only, c.text) else (c, None, ["not matched by --only"])
                   for c, run, notes in planned]
    if args.list:
        for c, run, notes in planned:
            print(f"README.md:{c.line}: {c.text}\n    {'RUN ' + run if run else 'NOT RUN'}" + "".join(f"\n    - {n}" for n in notes))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="hwnas-readme-"))
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    env.update(PATH=bindir + os.pathsep + env.get("PATH", ""), HWNAS_ASSETS_MIRROR=str(MIRROR), MPLBACKEND="Agg",
               HWNAS_CACHE=str(tmp / ".cache"), HWNAS_CONFIG_DIR=str(tmp / ".config"))
    print(f"README check in {tmp} ({'fast subset' if args.fast else 'every command'}); mirror {MIRROR}", flush=True)
    for name, content in files(text).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(content)
        print(f"wrote {name} from the README's python block", flush=True)

    from hwnas.spaces import create_space

    values = {"tmp": str(tmp), "arch": "'" + create_space("ofa_mbv3_w12", resolutions=[224]).sample(1, 0)[0].to_str() + "'"}
    makers: dict[str, Callable[[], None]] = {
        "imagenet": lambda: make_imagenet(tmp), "checkpoint": lambda: make_checkpoint(tmp),
        "proxyless_checkpoint": lambda: make_proxyless_checkpoint(tmp),
        "acc_mlp": lambda: make_acc_mlp(tmp), "run": lambda: make_run(tmp, env, args.timeout),
    }
    made: set[str] = set()
    failed, ran, t_all = [], 0, time.perf_counter()
    for i, (c, run, notes) in enumerate(planned, 1):
        head = f"[{i}/{len(planned)}] README.md:{c.line}: {c.text}"
        if run is None:
            print(f"{head}\n    SKIP ({'; '.join(notes)})", flush=True)
            continue
        for text_, repl, stand_in, _ in PLACEHOLDERS:
            if text_ in run:
                if stand_in and stand_in not in made:
                    makers[stand_in]()
                    made.add(stand_in)
                run = run.replace(text_, repl.format(**values))
        for n in notes:
            print(f"    - {n}")
        for pat, rel, _ in FILLED_BEFORE:
            if re.search(pat, run) and (tmp / rel).is_file():
                fill_plan(tmp / rel)
        t0 = time.perf_counter()
        try:
            p = _run(run, tmp, env, args.timeout)
            ok, tail = p.returncode == 0, (p.stderr or p.stdout)[-1500:]
            for _ in range(4):  # the command stopped for a plan to be filled (samples, then front): fill it, run again
                asked = PLAN_FILL.search((p.stderr or "") + (p.stdout or ""))
                if ok or not asked:
                    break
                fill_plan(Path(asked.group(1)))
                print(f"    - stopped for its plan, as the README says; filled {asked.group(1)} and ran it again", flush=True)
                p = _run(run, tmp, env, args.timeout)
                ok, tail = p.returncode == 0, (p.stderr or p.stdout)[-1500:]
        except subprocess.TimeoutExpired:
            ok, tail = False, f"ran past --timeout {args.timeout:g} s"
        ran += 1
        dt = time.perf_counter() - t0
        print(f"{head}\n    {'OK' if ok else 'FAIL'} ({dt:.1f} s)", flush=True)
        if not ok:
            failed.append(c)
            print("    " + tail.replace("\n", "\n    "), flush=True)
    print(f"\n{ran} commands run, {len(failed)} failed, {len(planned) - ran} not run, {time.perf_counter() - t_all:.0f} s")
    for c in failed:
        print(f"FAILED README.md:{c.line}: {c.text}")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
