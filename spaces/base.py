"""The search-space protocol shared by every space in hwnas.

A space owns one immutable architecture type and knows how to

* validate any user input (dict, JSON string, compact string, arch) into a canonical arch,
  raising one :class:`SpaceError` that names the field, the value and the allowed values;
* map archs to an integer genome (for pymoo) and back;
* produce feature matrices for predictors;
* sample, mutate and cross archs so that the result is always valid.

Sampling, mutation and crossover are implemented once here on top of the genome: every gene is an
index into that gene's allowed choices, so any gene vector within the bounds decodes to a valid arch.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Callable, Iterable

import numpy as np
from .errors import UserError


#: physical quantities a space can report per layer / choice (``CategoricalSpace.op_costs``,
#: ``mbconv.layer_costs``): 1x1-conv MACs, other MACs (k x k, depthwise, pooling), activation elements
#: read and written, operator launches, weights
COST_NAMES = ("pointwise_macs", "spatial_macs", "activations", "operators", "params")


def sample_genomes(sizes: Any, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``n`` genomes, gene ``i`` uniform over ``range(sizes[i])`` (one draw of ``rng`` per gene)."""
    from .checks import check_int

    n = check_int(n, "n", 0, example=10, what="how many archs to sample", error=SpaceError)
    sizes = np.asarray(sizes)
    return (np.random.default_rng(rng).random((n, len(sizes))) * sizes).astype(int)


class SpaceError(UserError, ValueError):
    """An architecture or a space configuration is invalid; the message names the field and the fix."""


def choice_error(field: str, value: Any, allowed: Iterable[Any], what: str = "") -> SpaceError:
    allowed = list(allowed)
    extra = f" ({what})" if what else ""
    return SpaceError(f"{field}={value!r} is not allowed{extra}; allowed values: {allowed}")


class SearchSpace(ABC):
    """Base class of all spaces. Subclasses define the genome and the arch type."""

    #: registry name (set by :func:`hwnas.spaces.create_space` / subclasses)
    name: str = "space"
    #: the immutable architecture type that flows through hwnas for this space
    arch_type: type = object

    # ----------------------------------------------------------------- validation
    @abstractmethod
    def validate(self, arch: Any) -> Any:
        """Return the canonical arch for ``arch`` (an arch, a dict, or a JSON / compact string)."""

    def parse(self, arch: Any) -> Any:
        """Alias of :meth:`validate`, reads better when the input is text."""
        return self.validate(arch)

    def contains(self, arch: Any) -> bool:
        try:
            self.validate(arch)
        except SpaceError:
            return False
        return True

    # ----------------------------------------------------------------- genome
    @property
    @abstractmethod
    def genome_sizes(self) -> np.ndarray:
        """Number of choices of every gene (gene ``i`` takes values ``0 .. sizes[i]-1``)."""

    @property
    def n_var(self) -> int:
        return int(len(self.genome_sizes))

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds ``(xl, xu)`` of the genome, as pymoo wants them."""
        sizes = np.asarray(self.genome_sizes)
        return np.zeros(len(sizes), dtype=int), sizes.astype(int) - 1

    @abstractmethod
    def encode(self, archs: Sequence[Any]) -> np.ndarray:
        """Integer genome matrix ``(n, n_var)`` of canonical archs."""

    @abstractmethod
    def decode(self, genomes: np.ndarray) -> list:
        """Archs of a genome matrix ``(n, n_var)`` (or one vector)."""

    def decode_arrays(self, genomes: np.ndarray) -> Any:
        """Vectorised decode used by fast predictors (space specific); default: the arch list."""
        return self.decode(genomes)

    def batch(self, genomes: np.ndarray) -> "ArchBatch":
        """A lazy :class:`ArchBatch` of the genomes (what the search hands to predictors)."""
        return ArchBatch(self, genomes)

    def canonical_genome(self, genomes: np.ndarray) -> np.ndarray:
        """Genomes with genes that do not affect the network normalised (for duplicate checks)."""
        return self.encode(self.decode(genomes))

    # ----------------------------------------------------------------- features
    @abstractmethod
    def features(self, archs: Sequence[Any]) -> np.ndarray:
        """One-hot float feature matrix ``(n, n_features)`` for predictors."""

    @property
    def feature_names(self) -> list[str]:
        raise NotImplementedError

    # ----------------------------------------------------------------- random operators
    def sample_genomes(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        return sample_genomes(self.genome_sizes, n, rng)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> list:
        """``n`` archs, every gene uniform over its allowed choices."""
        return self.decode(self.sample_genomes(n, rng))

    def mutate(self, arch: Any, rng: np.random.Generator | int | None = None, prob: float | None = None) -> Any:
        """Resample each gene with probability ``prob`` (default ``1/n_var``); at least one gene
        that changes the network is changed, so the result differs from ``arch``."""
        rng = np.random.default_rng(rng)
        sizes = np.asarray(self.genome_sizes)
        prob = 1.0 / len(sizes) if prob is None else prob
        base = self.encode([arch])[0]
        for _ in range(100):
            g = base.copy()
            hit = rng.random(len(g)) < prob
            if not hit.any():
                hit[rng.integers(len(g))] = True
            g[hit] = (rng.random(hit.sum()) * sizes[hit]).astype(int)
            child = self.decode(g[None])[0]
            if child != arch or sizes.max() <= 1:
                return child
        return child

    def crossover(self, a: Any, b: Any, rng: np.random.Generator | int | None = None) -> tuple[Any, Any]:
        """Uniform crossover of the two genomes: two valid children."""
        rng = np.random.default_rng(rng)
        ga, gb = self.encode([a, b])
        swap = rng.random(len(ga)) < 0.5
        ca, cb = ga.copy(), gb.copy()
        ca[swap], cb[swap] = gb[swap], ga[swap]
        x, y = self.decode(np.stack([ca, cb]))
        return x, y

    # ----------------------------------------------------------------- config / io
    @abstractmethod
    def to_config(self) -> dict:
        """A plain dict that recreates this space through hydra (``_target_`` + kwargs)."""

    def to_json(self, arch: Any) -> str:
        return json.dumps(self.validate(arch).to_dict(), sort_keys=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n_var={self.n_var})"


# ---------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Callable[..., SearchSpace]] = {}


def register_space(name: str) -> Callable:
    """Decorator: register a space factory (a class or a function) under ``name``. The same factory registered again
    (its module reloaded, a notebook cell run twice) replaces its entry; another factory under a taken name is an
    error."""
    if not isinstance(name, str) or not name.strip():
        raise SpaceError(f"register_space({name!r}): the name must be a non-empty string, e.g. register_space(\"widths\")")

    def deco(fn: Callable[..., SearchSpace]) -> Callable[..., SearchSpace]:
        old = _REGISTRY.get(name)
        if old is not None and _qualified(old) != _qualified(fn):
            raise SpaceError(f"space {name!r} is registered twice: by {_qualified(old)} and by {_qualified(fn)}; give "
                             "one of them another name")
        _REGISTRY[name] = fn
        return fn

    return deco


def _qualified(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def list_spaces() -> list[str]:
    return sorted(_REGISTRY)


def space_factory(name: str) -> Callable[..., SearchSpace]:
    """The factory registered under ``name`` (it takes every option, ``name=`` included)."""
    if name not in _REGISTRY:
        raise SpaceError(f"space={name!r} is unknown; registered spaces: {list_spaces()}")
    return _REGISTRY[name]


def create_space(name: str, **overrides: Any) -> SearchSpace:
    """Build a registered space by name; ``overrides`` replace its default settings
    (e.g. ``resolutions=[160, 176]``, ``depth_choices=[[2,3],...]``)."""
    factory = space_factory(name)
    try:
        space = factory(**overrides)
    except TypeError as exc:  # a misspelt option: named, with the options the space takes
        import inspect
        import re

        m = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if m is None or m.group(1) not in overrides:
            raise
        known: list[str] = []
        try:
            cls = factory if inspect.isclass(factory) else type(factory())
            for klass in cls.__mro__:  # the options of every __init__ that passes **kwargs on
                init = klass.__dict__.get("__init__")
                if init is None:
                    continue
                params = inspect.signature(init).parameters.values()
                known += [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                          and p.name not in known]
                if not any(p.kind == p.VAR_KEYWORD for p in params):
                    break
        except Exception:  # noqa: BLE001 - no list to give: the name alone
            known = []
        raise SpaceError(f"{m.group(1)}={overrides[m.group(1)]!r} is not an option of space {name}"
                         + (f"; its options: {known}" if known else "")) from None
    try:
        space.registry_name = name  # how files name it (hwnas.spaces.io.space_spec)
    except AttributeError:  # a factory returning an object with __slots__
        pass
    return space


class ArchBatch(Sequence):
    """A batch of archs decoded from a genome matrix, built lazily.

    It is a plain ``Sequence`` of archs, so any predictor works on it; predictors that know the space
    can use ``batch.arrays`` (the space's vectorised decode) and skip building arch objects.
    """

    def __init__(self, space: "SearchSpace", genomes: np.ndarray) -> None:
        self.space = space
        self.genomes = np.atleast_2d(np.asarray(genomes)).astype(int)
        self._archs: list | None = None
        self._arrays: Any = None

    @property
    def archs(self) -> list:
        if self._archs is None:
            self._archs = self.space.decode(self.genomes)
        return self._archs

    @property
    def arrays(self) -> Any:
        if self._arrays is None:
            self._arrays = self.space.decode_arrays(self.genomes)
        return self._arrays

    def __len__(self) -> int:
        return len(self.genomes)

    def __getitem__(self, i):  # type: ignore[override]
        return self.archs[i]

    def __iter__(self):
        return iter(self.archs)
