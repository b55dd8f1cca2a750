"""NAS-Bench-201 cell space (6 edges x 5 operations), and the small shared base of spaces whose genome
is a fixed number of positions, each picking one of a fixed list of choices (also used by FBNet).

NAS-Bench-201 arch strings look like ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``: node ``j`` (1..3) sums
edges from every earlier node ``i``, written ``op~i``. Edge order in the genome is the order of the
string: (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2).

Genome index: ``space.index(arch)`` is this space's own base-5 enumeration of the 6 edges (edge 0 most
significant). The official NAS-Bench-201 index is an API order that cannot be derived from the string;
datasets keep it as a separate column (see :mod:`hwnas.predictors.data`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from .base import COST_NAMES, SearchSpace, SpaceError, choice_error, register_space


# ============================================================================ shared categorical base
class CategoricalArchMixin:
    """JSON and ``str`` for the categorical arch types (each defines ``to_dict``, ``from_dict``, ``to_str``)."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Any:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpaceError(f"arch JSON could not be parsed ({exc}); expected {{'ops': [...]}}") from None
        return cls.from_dict(obj)

    def __str__(self) -> str:
        return self.to_str()


class CategoricalSpace(SearchSpace):
    """A space of ``n_positions`` genes, each one of ``choices`` (the same list for every position).

    Subclasses set ``arch_type`` (an immutable type with an ``ops`` tuple of choice names and
    ``to_dict/from_dict/to_str/from_str``), ``choices`` and ``n_positions``.
    """

    choices: tuple[str, ...] = ()
    n_positions: int = 0
    position_name: str = "position"

    def __init__(self) -> None:
        self._cidx = {c: i for i, c in enumerate(self.choices)}
        self._sizes = np.full(self.n_positions, len(self.choices), dtype=int)

    # ------------------------------------------------------------------ validation
    def validate(self, arch: Any) -> Any:
        t = self.arch_type
        if isinstance(arch, t):
            return arch
        if isinstance(arch, dict):
            return t.from_dict(arch)
        if isinstance(arch, str):
            s = arch.strip()
            return t.from_json(s) if s.startswith("{") else t.from_str(s)
        if isinstance(arch, (list, tuple, np.ndarray)):
            return t(ops=tuple(arch))
        raise SpaceError(
            f"arch must be a {t.__name__}, a dict {{'ops': [...]}}, a list of {self.n_positions} ops, "
            f"or a string; got {type(arch).__name__}"
        )

    # ------------------------------------------------------------------ genome
    @property
    def genome_sizes(self) -> np.ndarray:
        return self._sizes

    def encode(self, archs: Sequence[Any]) -> np.ndarray:
        out = np.zeros((len(archs), self.n_positions), dtype=int)
        for i, a in enumerate(archs):
            a = self.validate(a)
            out[i] = [self._cidx[o] for o in a.ops]
        return out

    def _check_genomes(self, genomes: np.ndarray) -> np.ndarray:
        g = np.atleast_2d(np.asarray(genomes)).astype(int)
        if g.shape[1] != self.n_positions:
            raise SpaceError(f"genome has {g.shape[1]} genes; space {self.name} has {self.n_positions}")
        if (g < 0).any() or (g >= len(self.choices)).any():
            bad = np.argwhere((g < 0) | (g >= len(self.choices)))[0]
            raise SpaceError(f"genome gene {bad[1]} = {g[tuple(bad)]} is out of range 0..{len(self.choices) - 1}")
        return g

    def decode_arrays(self, genomes: np.ndarray) -> np.ndarray:
        """Vectorised decode: the checked integer genome matrix itself (choice index per position)."""
        return self._check_genomes(genomes)

    def decode(self, genomes: np.ndarray) -> list:
        g = self._check_genomes(genomes)
        c = self.choices
        t = self.arch_type
        return [t(ops=tuple(c[j] for j in row)) for row in g]

    def index(self, arch: Any) -> int:
        """Base-``len(choices)`` enumeration of the genome (position 0 most significant)."""
        g = self.encode([arch])[0]
        return int(np.ravel_multi_index(tuple(g), tuple(self._sizes)))

    def from_index(self, idx: int) -> Any:
        if not 0 <= int(idx) < self.size:
            raise SpaceError(f"index={idx} is out of range 0..{self.size - 1}")
        return self.decode(np.array(np.unravel_index(int(idx), tuple(self._sizes)))[None])[0]

    @property
    def size(self) -> int:
        return int(np.prod(self._sizes.astype(float)))

    def all_archs(self) -> list:
        """Every arch of the space (only sensible for small spaces such as NAS-Bench-201)."""
        if self.size > 1_000_000:
            raise SpaceError(f"space {self.name} has {self.size:.3g} archs; too many to enumerate")
        g = np.stack(np.unravel_index(np.arange(self.size), tuple(self._sizes)), axis=1)
        return self.decode(g)

    # ------------------------------------------------------------------ features
    def features(self, archs: Sequence[Any]) -> np.ndarray:
        """One-hot of the choice at every position, ``(n, n_positions * n_choices)`` float32."""
        g = archs.genomes if hasattr(archs, "genomes") and getattr(archs, "space", None) is self else self.encode(archs)
        return self.features_from_genomes(g)

    def features_from_genomes(self, genomes: np.ndarray) -> np.ndarray:
        g = self._check_genomes(genomes)
        n, m = g.shape[0], len(self.choices)
        X = np.zeros((n, self.n_positions * m), dtype=np.float32)
        X[np.arange(n)[:, None], np.arange(self.n_positions)[None, :] * m + g] = 1.0
        return X

    @property
    def feature_names(self) -> list[str]:
        return [f"{self.position_name}{p}_{c}" for p in range(self.n_positions) for c in self.choices]

    #: names of the physical quantities of :meth:`op_costs`
    COST_NAMES = COST_NAMES

    def op_costs(self) -> np.ndarray | None:
        """Physical cost of each (position, choice): ``(n_positions, n_choices, 5)`` with the columns
        :attr:`COST_NAMES` (1x1-conv MACs, other MACs (k x k, depthwise, pooling), activation elements
        read and written, operator launches, weights), summed over the network. ``None`` when the
        space does not know its macro structure. Latency adaptation uses these as a device-agnostic
        ("roofline") description of what each choice costs."""
        return None

    def to_config(self) -> dict:
        return {"_target_": f"{type(self).__module__}.{type(self).__name__}"}

    def describe(self) -> str:
        return f"{self.name}: {self.n_positions} {self.position_name}s x {len(self.choices)} choices {list(self.choices)}"


def _check_ops(cls_name: str, ops: Any, choices: Sequence[str], n: int, field_name: str, aliases: dict | None = None) -> tuple[str, ...]:
    if isinstance(ops, (str, bytes)) or not hasattr(ops, "__iter__"):
        raise SpaceError(f"ops={ops!r} must be a list of {n} operation names")
    ops = list(ops)
    if len(ops) != n:
        raise SpaceError(f"ops has {len(ops)} entries; {cls_name} needs {n} (one per {field_name})")
    out = []
    for i, o in enumerate(ops):
        if isinstance(o, (int, np.integer)) and not isinstance(o, bool):
            if not 0 <= int(o) < len(choices):
                raise choice_error(f"ops[{i}]", int(o), list(range(len(choices))), f"index into {list(choices)}")
            o = choices[int(o)]
        elif isinstance(o, str):
            o = (aliases or {}).get(o.strip(), o.strip())
            if o not in choices:
                raise choice_error(f"ops[{i}]", o, choices, f"operation of {field_name} {i}")
        else:
            raise SpaceError(f"ops[{i}]={o!r} must be an operation name or index")
        out.append(o)
    return tuple(out)


# ============================================================================ NAS-Bench-201
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (to_node, from_node) of the 6 edges, in arch-string order
NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


@dataclass(frozen=True)
class NASBench201Arch(CategoricalArchMixin):
    """A NAS-Bench-201 cell: the operation on each of the 6 edges (in arch-string order). Immutable."""

    ops: tuple[str, ...]

    N_EDGES: ClassVar[int] = 6

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", _check_ops("NASBench201Arch", self.ops, NB201_OPS, 6, "edge"))

    def to_str(self) -> str:
        """The usual string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
        it = iter(self.ops)
        nodes = []
        for j in (1, 2, 3):
            nodes.append("|" + "|".join(f"{next(it)}~{i}" for i in range(j)) + "|")
        return "+".join(nodes)

    @classmethod
    def from_str(cls, text: str) -> "NASBench201Arch":
        s = str(text).strip()
        nodes = s.split("+")
        if len(nodes) != 3:
            raise SpaceError(
                f"arch_str {text!r} has {len(nodes)} node groups; expected 3 separated by '+', "
                "e.g. '|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|'"
            )
        ops = []
        for j, node in enumerate(nodes, start=1):
            parts = [p for p in node.strip().strip("|").split("|")]
            if len(parts) != j:
                raise SpaceError(f"arch_str {text!r}: node {j} has {len(parts)} inputs; it needs {j} ('op~0|...|op~{j - 1}')")
            for i, p in enumerate(parts):
                if "~" not in p:
                    raise SpaceError(f"arch_str {text!r}: edge {p!r} must be written 'op~{i}'")
                op, src = p.rsplit("~", 1)
                if src.strip() != str(i):
                    raise SpaceError(f"arch_str {text!r}: edge {p!r} of node {j} must come from node {i} ('{op}~{i}')")
                ops.append(op)
        return cls(ops=tuple(ops))

    def to_dict(self) -> dict:
        return {"ops": list(self.ops)}

    @classmethod
    def from_dict(cls, obj: dict) -> "NASBench201Arch":
        if not isinstance(obj, dict) or set(obj) - {"ops", "arch_str"} or not obj:
            raise SpaceError("a NAS-Bench-201 arch dict is {'ops': [6 op names]} or {'arch_str': '|op~0|+...'}")
        if "arch_str" in obj:
            return cls.from_str(obj["arch_str"])
        return cls(ops=tuple(obj["ops"]))



class NASBench201Space(CategoricalSpace):
    """The NAS-Bench-201 cell space: 6 edges, each one of none / skip_connect / nor_conv_1x1 /
    nor_conv_3x3 / avg_pool_3x3 (15,625 cells)."""

    name = "nasbench201"
    arch_type = NASBench201Arch
    choices = NB201_OPS
    n_positions = 6
    position_name = "edge"
    edges = NB201_EDGES
    #: macro structure (CIFAR input): per stage (channels, spatial size), 5 cells each, every cell the same
    macro = ((16, 32), (32, 16), (64, 8))
    cells_per_stage = 5

    def __init__(self, name: str | None = None) -> None:
        if name:
            self.name = name
        super().__init__()

    def op_costs(self) -> np.ndarray:
        """Per edge and op, summed over the 15 cells. ``none`` is a multiply by zero (one elementwise
        operator), ``skip_connect`` the identity, the convolutions ReLU-Conv-BN (3 operators),
        ``avg_pool_3x3`` one pooling operator."""
        out = np.zeros((self.n_positions, len(self.choices), len(self.COST_NAMES)))
        for c, hw in self.macro:
            a = c * hw * hw  # elements of one feature map
            per_op = {
                "none": (0, a, 2 * a, 1, 0),
                "skip_connect": (0, 0, 0, 0, 0),
                "nor_conv_1x1": (c * a, 0, 6 * a, 3, c * c),
                "nor_conv_3x3": (0, 9 * c * a, 6 * a, 3, 9 * c * c),
                "avg_pool_3x3": (0, 9 * a, 2 * a, 1, 0),
            }
            for j, op in enumerate(self.choices):
                out[:, j, :] += self.cells_per_stage * np.asarray(per_op[op], dtype=float)
        return out


@register_space("nasbench201")
def _nasbench201(**kw: Any) -> NASBench201Space:
    if kw.keys() - {"name"}:
        raise SpaceError(f"space nasbench201 takes no options; got {sorted(kw)}")
    return NASBench201Space(**kw)
