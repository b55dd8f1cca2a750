"""``hwnas-pipeline``: the hydra entry point (config ``hwnas/conf/pipeline.yaml``).

    hwnas-pipeline assets.mirror=../shared/data                       # OFA-MBv3, Note10 proxy, this CPU
    hwnas-pipeline target=remote target.scheduler=tcp://HOST:8786 target.device=pi4-ort
    hwnas-pipeline target=plan target.device=my-npu                  # numbers from your own tools
    hwnas-pipeline --config-name pipeline_nasbench201 target.device=titan_rtx_1   # a latency study
"""

from __future__ import annotations

import logging
import sys

from hwnas.spaces.errors import run_hydra

PROG = "hwnas-pipeline"


def _hydra_main_factory():
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="pkg://hwnas.conf", config_name="pipeline")
    def _main(cfg: DictConfig) -> float:
        from hydra.core.hydra_config import HydraConfig

        from .runner import run_pipeline

        from hwnas.search.cli import run_errors

        from hwnas.conf import shadowed_presets

        out = HydraConfig.get().runtime.output_dir
        for line in shadowed_presets():
            logging.getLogger("hwnas.pipeline").warning(line)
        with run_errors(PROG, out):
            s = run_pipeline(cfg, out, log=logging.getLogger("hwnas.pipeline").info)
        ev = s.get("evaluation") or {}
        from hwnas.search.nsga import _fmt_acc

        best = ", ".join(f"@{b}: {'-' if r is None else _fmt_acc(r['accuracy'])}" for b, r in s["best_at_budgets"].items())
        print(f"{PROG}: {out}: {s['target_measurements']} target measurements ({s['new_measurements_this_run']} new, "
              f"{s['target_measure_s']:.1f} s), final front {s['final_size']}; best {best}"
              + (f"; HV ratio vs true front {ev['hv_ratio']:.4f}" if ev else "")
              + f"; stages ran {s['stages_ran']}, skipped {s['stages_skipped']}")
        return float(ev.get("hv_ratio", s["hv_measured"]))

    return _main


def main() -> None:
    """Console-script entry point (``hwnas-pipeline``)."""
    run_hydra(PROG, _hydra_main_factory())


if __name__ == "__main__":
    sys.exit(main())
