"""Proxy adaptation: a latency predictor fitted on one proxy device, adapted to a target device from a
few (K) measured target samples, and the choice of which K archs to measure.

    model = adapt(proxy, archs, latencies)                 # method="bayes", library="auto"
    idx = select_samples(space, candidates, k=10, proxy=proxy)

* :mod:`.core`: :func:`adapt`, :class:`AdaptedPredictor` (a per-position linear model of the target,
  JSON round trip), the method table :data:`METHODS` (:func:`register_method`);
* :mod:`.basis`: features, reference population and prior kernels of a space;
* :mod:`.library`: other devices of the space as a prior (:class:`DeviceLibrary`);
* :mod:`.bayes` (default), :mod:`.adaproxy` (AdaProxy, plain AdaProxy, the scaled proxy),
  :mod:`.multiproxy`: the methods;
* :mod:`.selection`: :func:`select_samples` (``auto``, ``stratified``, ``kmeans``, ``random``);
* :mod:`.adapted`: :class:`AdaptedLatency`, the ``latency=adapted`` config predictor.
"""

from . import adaproxy, bayes, multiproxy  # noqa: F401  (the methods register themselves)
from .adapted import AdaptedLatency
from .basis import Basis, basis_for, proxy_direction
from .core import METHODS, AdaptationError, AdaptedPredictor, adapt, check_samples, register_method
from .library import DeviceLibrary, resolve_library
from .selection import SELECTIONS, kmeans, register_selection, select_samples

__all__ = ["AdaptationError", "AdaptedLatency", "AdaptedPredictor", "Basis", "DeviceLibrary", "METHODS", "SELECTIONS", "adapt",
           "basis_for", "check_samples", "kmeans", "proxy_direction", "register_method", "register_selection", "resolve_library",
           "select_samples"]
