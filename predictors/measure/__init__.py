"""Measuring latency on a real device: this machine, a remote device's Dask worker, or your own tools.

* :mod:`.protocol` -- the protocol's settings (:class:`MeasureConfig`) and results (:class:`Measurement`);
* :mod:`.worker` -- the timing processes and the protocol's control logic (self-contained: it also
  runs on remote devices);
* :mod:`.models` -- the networks timed (:class:`ModelSpec`), exported through :mod:`hwnas.supernet.onnx`;
* :mod:`.measurer` -- :class:`LocalMeasurer` and :class:`MeasuredLatency` (measure on demand, cached);
* :mod:`.remote` -- :class:`DaskMeasurer` (a device running ``dask worker ... --resources hwnas-device=1``);
* :mod:`.store` -- the SQLite store (one commit per measurement);
* :mod:`.plan` -- bring your own numbers: the K archs to measure with another tool, and reading them back;
* :mod:`.lut_build` -- a per-layer lookup table of this machine;
* :mod:`.cli` -- ``hwnas-measure``.
"""

from .measurer import LocalMeasurer, MeasuredLatency, measure_archs, measure_module, measure_specs
from .models import ModelSpec, arch_model, arch_spec, tiny_cnn
from .protocol import MeasureConfig, MeasureConfigError, MeasureError, Measurement, run_protocol, summarise
from .store import MeasurementStore, StoreCorruptedError, StoreError, StoreReadOnlyError
from .worker import relative_spread

__all__ = [
    "LocalMeasurer", "MeasuredLatency", "measure_archs", "measure_module", "measure_specs", "ModelSpec", "arch_model",
    "arch_spec", "tiny_cnn", "MeasureConfig", "MeasureConfigError", "MeasureError", "Measurement", "run_protocol",
    "summarise", "MeasurementStore", "StoreCorruptedError", "StoreError", "StoreReadOnlyError", "relative_spread",
]
