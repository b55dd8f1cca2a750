"""Predictors of a scalar per architecture (accuracy, latency) behind one small protocol."""

from .assets import AssetError, fetch, set_default_mirror
from .base import Predictor, PredictorProtocol, as_predictor, predict_array

__all__ = ["AssetError", "fetch", "set_default_mirror", "Predictor", "PredictorProtocol", "as_predictor", "predict_array"]
