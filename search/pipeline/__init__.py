"""``hwnas-pipeline``: one resumable run from a proxy device to your target device.

proxy predictor -> K target samples -> adaptation -> profile and reduce the space -> NSGA-II ->
re-measure the front on the target -> export with weights -> report. See :mod:`.stages` for the
stages, :mod:`.runner` for how a run folder resumes, :mod:`.cli` for the command.
"""

from .runner import Context, PipelineError, Stage, run_pipeline, run_stages

__all__ = ["Context", "PipelineError", "Stage", "run_pipeline", "run_stages"]
