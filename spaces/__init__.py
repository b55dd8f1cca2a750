"""Search spaces: architecture types, validation, genomes, encodings and layer descriptions."""

from .base import ArchBatch, SearchSpace, SpaceError, create_space, list_spaces, register_space
from .mbconv import (
    LayerSpec,
    MBConvArch,
    MBConvSpace,
    OFAMobileNetV3Arch,
    OFAMobileNetV3Space,
    OFAProxylessSpace,
    ProxylessArch,
    ProxylessMobileSpace,
    make_divisible,
    ofa_predictor_features,
)

__all__ = [
    "ArchBatch",
    "SearchSpace",
    "SpaceError",
    "create_space",
    "list_spaces",
    "register_space",
    "LayerSpec",
    "MBConvArch",
    "MBConvSpace",
    "OFAMobileNetV3Arch",
    "OFAMobileNetV3Space",
    "OFAProxylessSpace",
    "ProxylessArch",
    "ProxylessMobileSpace",
    "make_divisible",
    "ofa_predictor_features",
    "FBNetArch",
    "FBNetSpace",
    "NASBench201Arch",
    "NASBench201Space",
    "RestrictedSpace",
]

from .fbnet import FBNetArch, FBNetSpace  # noqa: E402  (registers "fbnet")
from .nasbench201 import NASBench201Arch, NASBench201Space  # noqa: E402  (registers "nasbench201")
from .restricted import RestrictedSpace  # noqa: E402  (registers "restricted")
