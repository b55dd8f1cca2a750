"""Latency datasets: the same architectures measured on several devices (:mod:`.datasets`), and where
the builtin ones come from (:mod:`.sources`: HELP's published files, converted into the cache)."""

from .datasets import (ARCH_COLUMNS, BUILTIN, DatasetError, DatasetLatency, LatencyDataset, _space, arch_text, check_measured, fit_linear,
                       guess_space, is_user_file, load_dataset)

__all__ = ["ARCH_COLUMNS", "BUILTIN", "DatasetError", "DatasetLatency", "LatencyDataset", "arch_text", "check_measured", "fit_linear",
           "guess_space", "is_user_file", "load_dataset", "_space"]
