"""Elastic MobileNet spaces: Once-for-All MobileNetV3, OFA-ProxylessNAS and the original ProxylessNAS
mobile space.

Architectures use Once-for-All's own dict convention ``{"ks": [...], "e": [...], "d": [...], "r": int}``:
slot ``sum(max_depth[:u]) + j`` is layer ``j`` of unit ``u``, and only the first ``d[u]`` layers of a
unit are active. The values in inactive slots do not change the network, so the arch type normalises
them (kernel 3, expand 3); equal networks therefore compare and hash equal.

A *block choice* is a (kernel, expand) pair. A space lists the allowed block choices per unit (the
full cross product by default; a reduced space drops some), the allowed depths per unit and the
allowed input resolutions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from .base import SearchSpace, SpaceError, choice_error, register_space

INACTIVE_K = 3
INACTIVE_E = 3


def _plain(x: Any) -> Any:
    """Nested sequences (lists, tuples, omegaconf ListConfig) -> nested lists; strings stay strings."""
    from collections.abc import Sequence as _Seq

    if isinstance(x, (str, bytes)):
        return x
    if isinstance(x, _Seq) or type(x).__name__ == "ListConfig":
        return [_plain(v) for v in x]
    return x


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor``, never going down by more than 10% (MobileNet rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


# ============================================================================ architecture type
def _ints(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise SpaceError(f"{name}={value!r} must be a list of integers")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise SpaceError(f"{name}[{i}]={v!r} must be an integer")
        out.append(int(v))
    return tuple(out)


@dataclass(frozen=True)
class MBConvArch:
    """An elastic-MobileNet subnet in OFA's convention; immutable and canonical.

    ``ks[i]``/``e[i]``: kernel size and expand ratio of slot ``i``; ``d[u]``: active layers of unit
    ``u``; ``r``: input resolution. Subclasses fix the slot layout (``LAYOUT``: max layers per unit).
    """

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int

    LAYOUT: ClassVar[tuple[int, ...]] = (4, 4, 4, 4, 4)

    def __post_init__(self) -> None:
        ks, e, d = _ints("ks", self.ks), _ints("e", self.e), _ints("d", self.d)
        layout = self.LAYOUT
        n = sum(layout)
        if len(d) == len(layout):
            pass
        elif len(d) == len(layout) - 1 and layout[-1] == 1:
            d = d + (1,)  # OFA-Proxyless configs may omit the fixed single-layer last unit
        else:
            raise SpaceError(f"d has {len(d)} entries; {type(self).__name__} needs {len(layout)} (one per unit)")
        if len(ks) != n:
            raise SpaceError(f"ks has {len(ks)} entries; {type(self).__name__} needs {n} (one per slot)")
        if len(e) != n:
            raise SpaceError(f"e has {len(e)} entries; {type(self).__name__} needs {n} (one per slot)")
        if layout[-1] == 1 and len(d) == len(layout) and d[-1] != 1:
            d = d[:-1] + (1,)  # the last unit of ProxylessNAS has exactly one layer
        for u, (du, mu) in enumerate(zip(d, layout)):
            if not 1 <= du <= mu:
                raise SpaceError(f"d[{u}]={du} is out of range; unit {u} has 1..{mu} layers")
        r = self.r
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise SpaceError(f"r={r!r} must be an integer resolution such as 224")
        ks_l, e_l = list(ks), list(e)
        start = 0
        for du, mu in zip(d, layout):
            for j in range(du, mu):
                ks_l[start + j] = INACTIVE_K
                e_l[start + j] = INACTIVE_E
            start += mu
        object.__setattr__(self, "ks", tuple(ks_l))
        object.__setattr__(self, "e", tuple(e_l))
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "r", int(r))

    # ------------------------------------------------------------------ structure
    @classmethod
    def unit_starts(cls) -> list[int]:
        return [sum(cls.LAYOUT[:u]) for u in range(len(cls.LAYOUT))]

    def active_slots(self) -> list[int]:
        """Indices of the active slots, in network order."""
        out = []
        for start, du in zip(self.unit_starts(), self.d):
            out.extend(range(start, start + du))
        return out

    def blocks(self) -> list[list[tuple[int, int]]]:
        """Per unit, the (kernel, expand) of each active layer."""
        return [
            [(self.ks[s + j], self.e[s + j]) for j in range(du)] for s, du in zip(self.unit_starts(), self.d)
        ]

    @property
    def n_layers(self) -> int:
        return int(sum(self.d))

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, obj: dict) -> "MBConvArch":
        if not isinstance(obj, dict):
            raise SpaceError(f"arch must be a dict with keys ks, e, d, r; got {type(obj).__name__}")
        missing = [k for k in ("ks", "e", "d", "r") if k not in obj]
        if missing:
            raise SpaceError(f"arch is missing key(s) {missing}; an arch is {{'ks': [...], 'e': [...], 'd': [...], 'r': int}}")
        extra = sorted(set(obj) - {"ks", "e", "d", "r"})
        if extra:
            raise SpaceError(f"arch has unknown key(s) {extra}; allowed keys: ['ks', 'e', 'd', 'r']")
        return cls(ks=obj["ks"], e=obj["e"], d=obj["d"], r=obj["r"])

    @classmethod
    def from_json(cls, text: str) -> "MBConvArch":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpaceError(f"arch JSON could not be parsed ({exc}); expected {{\"ks\": [...], ...}}") from None
        return cls.from_dict(obj)

    def to_str(self) -> str:
        """Compact string: ``r224:k3e4.k5e6/k7e3.k3e3/...`` (units separated by ``/``)."""
        units = [".".join(f"k{k}e{e}" for k, e in unit) for unit in self.blocks()]
        return f"r{self.r}:" + "/".join(units)

    @classmethod
    def from_str(cls, text: str) -> "MBConvArch":
        try:
            head, body = text.strip().split(":", 1)
            if not head.startswith("r"):
                raise ValueError
            r = int(head[1:])
            units = body.split("/")
            if len(units) != len(cls.LAYOUT):
                raise SpaceError(
                    f"arch string has {len(units)} units; {cls.__name__} needs {len(cls.LAYOUT)} separated by '/'"
                )
            ks, e, d = [], [], []
            for u, (unit, mu) in enumerate(zip(units, cls.LAYOUT)):
                layers = [x for x in unit.split(".") if x]
                if len(layers) > mu:
                    raise SpaceError(f"unit {u} of the arch string has {len(layers)} layers; at most {mu}")
                for layer in layers:
                    k_part, e_part = layer[1:].split("e")
                    if not layer.startswith("k"):
                        raise ValueError
                    ks.append(int(k_part))
                    e.append(int(e_part))
                for _ in range(mu - len(layers)):
                    ks.append(INACTIVE_K)
                    e.append(INACTIVE_E)
                d.append(len(layers))
        except SpaceError:
            raise
        except ValueError:
            raise SpaceError(
                f"arch string {text!r} could not be parsed; expected e.g. 'r224:k3e4.k5e6/k7e3.k3e3/...'"
            ) from None
        return cls(ks=ks, e=e, d=d, r=r)

    def __str__(self) -> str:
        return self.to_str()


class OFAMobileNetV3Arch(MBConvArch):
    """Subnet of the Once-for-All MobileNetV3 supernet: 5 units x 4 slots."""

    LAYOUT = (4, 4, 4, 4, 4)


class ProxylessArch(MBConvArch):
    """Subnet of a ProxylessNAS-style space: 5 elastic units x 4 slots + one single-layer unit (21 slots)."""

    LAYOUT = (4, 4, 4, 4, 4, 1)


# ============================================================================ layer descriptions
@dataclass(frozen=True)
class LayerSpec:
    """One layer of a concrete network: shapes are (H, W, C), ``mid`` the expanded channels."""

    name: str
    kind: str  # "conv" | "mbconv" | "pool" | "linear"
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    kernel: int = 1
    stride: int = 1
    expand: float = 1.0
    mid: int = 0
    se: bool = False
    act: str = "relu"
    idskip: bool = False
    bn: bool = True
    unit: int = -1  # elastic unit index, -1 for fixed layers
    slot: int = -1  # slot index in the arch, -1 for fixed layers


def conv_out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def layer_costs(L: LayerSpec) -> np.ndarray:
    """:data:`~hwnas.spaces.base.COST_NAMES` of one layer: 1x1-conv MACs (with the squeeze-excite
    FCs and the classifier), k x k / depthwise MACs, activation elements read and written, operator
    launches, weights. Pooling counts no MACs."""
    hi, wi, ci = L.in_shape
    ho, wo, co = L.out_shape
    if L.kind == "mbconv":
        m, k = L.mid, L.kernel
        has_expand = m != ci or L.expand != 1
        se = 2 * m * make_divisible(m // 4, 8) if L.se else 0
        pw = (hi * wi * ci * m if has_expand else 0) + ho * wo * m * co + se
        act = hi * wi * ci + (hi * wi * m if has_expand else 0) + ho * wo * m + ho * wo * co
        ops = 2 + has_expand + (2 if L.se else 0)
        params = (ci * m if has_expand else 0) + k * k * m + m * co + se
        return np.array([pw, ho * wo * m * k * k, act, ops, params], dtype=float)
    if L.kind == "conv":
        macs = ho * wo * co * ci * L.kernel * L.kernel
        pw, sp = (macs, 0) if L.kernel == 1 else (0, macs)
        return np.array([pw, sp, hi * wi * ci + ho * wo * co, 1, ci * co * L.kernel**2], dtype=float)
    if L.kind == "linear":
        return np.array([ci * co * (hi * wi if L.name == "classifier_with_pool" else 1), 0, ci + co, 1, ci * co], dtype=float)
    return np.array([0, 0, hi * wi * ci + ho * wo * co, 1, 0], dtype=float)  # pooling


# ============================================================================ spaces
@dataclass
class _Stage:
    width: int
    stride: int
    act: str
    se: bool


class MBConvSpace(SearchSpace):
    """Common implementation of the elastic MobileNet spaces.

    Subclasses describe the fixed macro structure; the constructor takes the elastic settings
    (choices of kernel, expand, depth, resolution, and optionally a restricted list of block
    choices per unit, used by search-space reduction).
    """

    arch_type = MBConvArch
    family = "mbconv"
    #: the adaptation's sample selection for ``selection=auto`` (see hwnas.predictors.adapt.selection)
    adapt_selection = "kmeans"
    default_kernels: tuple[int, ...] = (3, 5, 7)
    default_expands: tuple[int, ...] = (3, 4, 6)
    default_depths: tuple[int, ...] = (2, 3, 4)
    default_resolutions: tuple[int, ...] = tuple(range(128, 225, 4))

    def __init__(
        self,
        name: str | None = None,
        kernel_choices: Sequence[int] | None = None,
        expand_choices: Sequence[int] | None = None,
        depth_choices: Sequence[int] | Sequence[Sequence[int]] | None = None,
        resolutions: Sequence[int] | None = None,
        block_choices: Sequence[Any] | None = None,
        n_classes: int = 1000,
    ) -> None:
        self.name = name or self.name
        self.n_classes = int(n_classes)
        kernel_choices, expand_choices, depth_choices, resolutions, block_choices = (
            _plain(x) for x in (kernel_choices, expand_choices, depth_choices, resolutions, block_choices)
        )
        layout = self.arch_type.LAYOUT
        n_units = len(layout)
        def given(v: Any, default: Any) -> Any:  # (None: the default; an empty list is refused, not replaced)
            return default if v is None else v

        self.kernel_choices = self._int_list("kernel_choices", given(kernel_choices, self.default_kernels), allowed=(3, 5, 7))
        self.expand_choices = self._int_list("expand_choices", given(expand_choices, self.default_expands))
        self.resolutions = self._int_list("resolutions", given(resolutions, self.default_resolutions))
        for r in self.resolutions:
            if not 32 <= r <= 1024:
                raise SpaceError(f"resolutions contains {r}; resolutions must lie in 32..1024")

        # depth choices: one list for every unit, or one list per unit
        dc = depth_choices if depth_choices is not None else self.default_depths
        if len(dc) and all(isinstance(x, (list, tuple)) for x in dc):
            if len(dc) not in (n_units, n_units - 1):
                raise SpaceError(f"depth_choices has {len(dc)} per-unit lists; this space has {n_units} units")
            per_unit = [list(x) for x in dc]
        else:
            per_unit = [list(dc) for _ in range(n_units)]
        if layout[-1] == 1:
            per_unit = per_unit[: n_units - 1] + [[1]]
        self.depth_choices = [
            self._int_list(f"depth_choices[{u}]", [min(x, layout[u]) if layout[u] == 1 else x for x in ch])
            for u, ch in enumerate(per_unit)
        ]
        for u, ch in enumerate(self.depth_choices):
            for x in ch:
                if not 1 <= x <= layout[u]:
                    raise SpaceError(f"depth_choices[{u}] contains {x}; unit {u} allows 1..{layout[u]} layers")

        # block choices: all (k, e) pairs, or a restricted list (global or per unit)
        full = [(k, e) for k in self.kernel_choices for e in self.expand_choices]
        if block_choices is None:
            per_unit_blocks = [list(full) for _ in range(n_units)]
        else:
            bc = list(block_choices)
            if bc and all(isinstance(x, (list, tuple)) and x and isinstance(x[0], (list, tuple, str)) for x in bc):
                if len(bc) != n_units:
                    raise SpaceError(f"block_choices has {len(bc)} per-unit lists; this space has {n_units} units")
                per_unit_blocks = [[self._block(f"block_choices[{u}]", b) for b in x] for u, x in enumerate(bc)]
            else:
                blocks = [self._block("block_choices", b) for b in bc]
                per_unit_blocks = [list(blocks) for _ in range(n_units)]
        for u, blocks in enumerate(per_unit_blocks):
            if not blocks:
                raise SpaceError(f"block_choices for unit {u} is empty; keep at least one (kernel, expand) pair")
            for k, e in blocks:
                if k not in self.kernel_choices or e not in self.expand_choices:
                    raise SpaceError(
                        f"block_choices for unit {u} has k{k}e{e}; kernel must be in {self.kernel_choices} "
                        f"and expand in {self.expand_choices}"
                    )
        self.block_choices = [sorted(set(b), key=full.index) for b in per_unit_blocks]
        self._build_tables()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _int_list(field: str, values: Sequence[Any], allowed: Sequence[int] | None = None) -> list[int]:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise SpaceError(f"{field}={values!r} must be a list of integers, e.g. {field}=[160, 224]")
        try:
            out = sorted({int(v) for v in values})
        except (TypeError, ValueError):
            raise SpaceError(f"{field}={values!r} must be a list of integers") from None
        if not out:
            raise SpaceError(f"{field} is empty; give at least one value")
        if allowed is not None:
            for v in out:
                if v not in allowed:
                    raise choice_error(field, v, allowed)
        return out

    @staticmethod
    def _block(field: str, b: Any) -> tuple[int, int]:
        if isinstance(b, str):  # "k3e4"
            try:
                k, e = b.lower().lstrip("k").split("e")
                return int(k), int(e)
            except ValueError:
                raise SpaceError(f"{field} entry {b!r} is not a block choice; write 'k5e4' or [5, 4]") from None
        if isinstance(b, (list, tuple)) and len(b) == 2:
            return int(b[0]), int(b[1])
        raise SpaceError(f"{field} entry {b!r} is not a block choice; write 'k5e4' or [5, 4]")

    def _build_tables(self) -> None:
        layout = self.arch_type.LAYOUT
        self.n_slots = sum(layout)
        self.n_units = len(layout)
        self.slot_unit = np.repeat(np.arange(self.n_units), layout)
        self.slot_pos = np.concatenate([np.arange(m) for m in layout])
        self.unit_starts = np.array(self.arch_type.unit_starts())
        # gene layout: [block per slot] + [depth per unit] + [resolution]
        self._slot_choices = [self.block_choices[u] for u in self.slot_unit]
        self._block_index = [{b: i for i, b in enumerate(bc)} for bc in self._slot_choices]
        self._sizes = np.array(
            [len(c) for c in self._slot_choices] + [len(c) for c in self.depth_choices] + [len(self.resolutions)],
            dtype=int,
        )
        # lookup arrays for vectorised decode
        maxb = int(max(len(c) for c in self._slot_choices))
        self._k_tab = np.full((self.n_slots, maxb), INACTIVE_K, dtype=int)
        self._e_tab = np.full((self.n_slots, maxb), INACTIVE_E, dtype=int)
        for s, bc in enumerate(self._slot_choices):
            for i, (k, e) in enumerate(bc):
                self._k_tab[s, i], self._e_tab[s, i] = k, e
        self._kmap = {k: i for i, k in enumerate(self.kernel_choices)}
        self._emap = {e: i for i, e in enumerate(self.expand_choices)}

    # ------------------------------------------------------------------ SearchSpace API
    @property
    def genome_sizes(self) -> np.ndarray:
        return self._sizes

    @property
    def all_block_choices(self) -> list[tuple[int, int]]:
        return [(k, e) for k in self.kernel_choices for e in self.expand_choices]

    def validate(self, arch: Any) -> MBConvArch:
        a = self._coerce(arch)
        for u, du in enumerate(a.d):
            if du not in self.depth_choices[u]:
                raise choice_error(f"d[{u}]", du, self.depth_choices[u], f"depth of unit {u} in space {self.name}")
        if a.r not in self.resolutions:
            raise choice_error("r", a.r, self.resolutions, f"input resolution in space {self.name}")
        for s in a.active_slots():
            k, e = a.ks[s], a.e[s]
            if k not in self.kernel_choices:
                raise choice_error(f"ks[{s}]", k, self.kernel_choices, "kernel size")
            if e not in self.expand_choices:
                raise choice_error(f"e[{s}]", e, self.expand_choices, "expand ratio")
            if (k, e) not in self._block_index[s]:
                allowed = [f"k{kk}e{ee}" for kk, ee in self._slot_choices[s]]
                raise choice_error(f"slot {s} block", f"k{k}e{e}", allowed, f"block choices of unit {self.slot_unit[s]}")
        return a

    def _coerce(self, arch: Any) -> MBConvArch:
        t = self.arch_type
        if isinstance(arch, t):
            return arch
        if isinstance(arch, MBConvArch):  # another layout
            raise SpaceError(f"arch is a {type(arch).__name__}; space {self.name} takes {t.__name__}")
        if isinstance(arch, dict):
            return t.from_dict(arch)
        if isinstance(arch, str):
            s = arch.strip()
            return t.from_json(s) if s.startswith("{") else t.from_str(s)
        raise SpaceError(f"arch must be a {t.__name__}, a dict, or a JSON / compact string; got {type(arch).__name__}")

    def encode(self, archs: Sequence[Any]) -> np.ndarray:
        out = np.zeros((len(archs), self.n_var), dtype=int)
        ns, nu = self.n_slots, self.n_units
        for i, arch in enumerate(archs):
            a = self.validate(arch)
            active = np.zeros(ns, dtype=bool)
            active[a.active_slots()] = True
            for s in range(ns):
                out[i, s] = self._block_index[s][(a.ks[s], a.e[s])] if active[s] else 0
            for u in range(nu):
                out[i, ns + u] = self.depth_choices[u].index(a.d[u])
            out[i, ns + nu] = self.resolutions.index(a.r)
        return out

    def decode_arrays(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised decode: ``(ks, e, d, r)`` integer arrays, inactive slots normalised."""
        g = np.atleast_2d(np.asarray(genomes)).astype(int)
        if g.shape[1] != self.n_var:
            raise SpaceError(f"genome has {g.shape[1]} genes; space {self.name} has {self.n_var}")
        if (g < 0).any() or (g >= self._sizes).any():
            bad = np.argwhere((g < 0) | (g >= self._sizes))[0]
            raise SpaceError(f"genome gene {bad[1]} = {g[tuple(bad)]} is out of range 0..{self._sizes[bad[1]] - 1}")
        ns, nu = self.n_slots, self.n_units
        slots = np.arange(ns)
        ks = self._k_tab[slots, g[:, :ns]]
        es = self._e_tab[slots, g[:, :ns]]
        d = np.stack([np.asarray(self.depth_choices[u])[g[:, ns + u]] for u in range(nu)], axis=1)
        r = np.asarray(self.resolutions)[g[:, ns + nu]]
        active = self.slot_pos[None, :] < d[:, self.slot_unit]
        ks = np.where(active, ks, INACTIVE_K)
        es = np.where(active, es, INACTIVE_E)
        return ks, es, d, r

    def decode(self, genomes: np.ndarray) -> list[MBConvArch]:
        ks, es, d, r = self.decode_arrays(genomes)
        t = self.arch_type
        return [t(ks=tuple(ks[i]), e=tuple(es[i]), d=tuple(d[i]), r=int(r[i])) for i in range(len(r))]

    def canonical_genome(self, genomes: np.ndarray) -> np.ndarray:
        g = np.atleast_2d(np.asarray(genomes)).astype(int).copy()
        ns = self.n_slots
        ks, es, d, r = self.decode_arrays(g)
        active = self.slot_pos[None, :] < d[:, self.slot_unit]
        g[:, :ns] = np.where(active, g[:, :ns], 0)
        return g

    def active_mask(self, archs: Sequence[MBConvArch]) -> np.ndarray:
        d = np.array([a.d for a in archs], dtype=int).reshape(len(archs), self.n_units)
        return self.slot_pos[None, :] < d[:, self.slot_unit]

    # ------------------------------------------------------------------ features
    def features(self, archs: Sequence[Any]) -> np.ndarray:
        """Per slot one-hot of the (kernel, expand) pair over all pairs of the space (zeros when the
        slot is inactive), then one-hot depth per unit, then one-hot resolution."""
        archs = [self._coerce(a) for a in archs]
        pairs = self.all_block_choices
        pidx = {p: i for i, p in enumerate(pairs)}
        npairs = len(pairs)
        nd = [len(c) for c in self.depth_choices]
        n_feat = self.n_slots * npairs + sum(nd) + len(self.resolutions)
        X = np.zeros((len(archs), n_feat), dtype=np.float32)
        dofs = self.n_slots * npairs + np.concatenate([[0], np.cumsum(nd)[:-1]])
        rofs = self.n_slots * npairs + sum(nd)
        for i, a in enumerate(archs):
            for s in a.active_slots():
                X[i, s * npairs + pidx[(a.ks[s], a.e[s])]] = 1.0
            for u, du in enumerate(a.d):
                if du in self.depth_choices[u]:
                    X[i, dofs[u] + self.depth_choices[u].index(du)] = 1.0
            if a.r in self.resolutions:
                X[i, rofs + self.resolutions.index(a.r)] = 1.0
        return X

    @property
    def feature_names(self) -> list[str]:
        names = [f"s{s}_k{k}e{e}" for s in range(self.n_slots) for k, e in self.all_block_choices]
        names += [f"u{u}_d{d}" for u, ch in enumerate(self.depth_choices) for d in ch]
        names += [f"r{r}" for r in self.resolutions]
        return names

    # ------------------------------------------------------------------ macro structure
    def first_layers(self, r: int) -> list[LayerSpec]:
        raise NotImplementedError

    def final_layers(self, shape: tuple[int, int, int]) -> list[LayerSpec]:
        raise NotImplementedError

    stages: list[_Stage] = []

    def mid_channels(self, in_c: int, expand: float) -> int:
        return make_divisible(round(in_c * expand), 8)

    def layers(self, arch: Any) -> list[LayerSpec]:
        """Every layer of the subnet with its shapes, in order (used by lookup tables, profiling,
        measurement and export)."""
        return self.layers_unchecked(self.validate(arch))

    def layers_unchecked(self, a: MBConvArch) -> list[LayerSpec]:
        """:meth:`layers` of an arch of this space's type without checking it against the space's
        choices (geometry probes, e.g. a slot's shapes under a choice a reduced space no longer allows)."""
        out = self.first_layers(a.r)
        h, w, c = out[-1].out_shape
        for u, (start, du) in enumerate(zip(self.unit_starts, a.d)):
            st = self.stages[u]
            for j in range(du):
                s = int(start + j)
                stride = st.stride if j == 0 else 1
                oh, ow = conv_out(h, stride), conv_out(w, stride)
                k, e = a.ks[s], a.e[s]
                out.append(
                    LayerSpec(
                        name=f"unit{u}.layer{j}",
                        kind="mbconv",
                        in_shape=(h, w, c),
                        out_shape=(oh, ow, st.width),
                        kernel=k,
                        stride=stride,
                        expand=e,
                        mid=self.mid_channels(c, e),
                        se=st.se,
                        act=st.act,
                        idskip=(stride == 1 and c == st.width),
                        unit=u,
                        slot=s,
                    )
                )
                h, w, c = oh, ow, st.width
        out.extend(self.final_layers((h, w, c)))
        return out

    def macs(self, arch: Any) -> int:
        """Multiply-accumulates of the subnet (convolutions, SE and classifier)."""
        return int(sum(float(c[0] + c[1]) for c in map(layer_costs, self.layers(arch))))

    def is_restriction_of(self, other: Any) -> bool:
        """Whether every arch of this space is an arch of ``other``: the same network family (class, widths,
        units) with a subset of its blocks, depths and resolutions per unit -- e.g. a space reduced by
        ``hwnas-profile``. Latency features and data of ``other`` then serve this space too."""
        if type(other) is not type(self) or getattr(other, "width_mult", None) != getattr(self, "width_mult", None):
            return False
        if other.n_units != self.n_units or not set(self.resolutions) <= set(other.resolutions):
            return False
        return all(set(map(tuple, a)) <= set(map(tuple, b)) for a, b in zip(self.block_choices, other.block_choices)) and \
            all(set(a) <= set(b) for a, b in zip(self.depth_choices, other.depth_choices))

    # ------------------------------------------------------------------ config
    def to_config(self) -> dict:
        full_blocks = [list(self.all_block_choices) for _ in range(self.n_units)]
        cfg: dict[str, Any] = {
            "_target_": f"{type(self).__module__}.{type(self).__name__}",
            "name": self.name,
            "kernel_choices": list(self.kernel_choices),
            "expand_choices": list(self.expand_choices),
            "depth_choices": [list(x) for x in self.depth_choices],
            "resolutions": list(self.resolutions),
        }
        if self.block_choices != full_blocks:
            cfg["block_choices"] = [[f"k{k}e{e}" for k, e in bc] for bc in self.block_choices]
        return cfg

    def describe(self) -> str:
        size = 1.0
        for s in range(self.n_var):
            size *= float(self._sizes[s])
        return (
            f"{self.name}: {self.n_units} units, {self.n_slots} slots, kernels {self.kernel_choices}, "
            f"expands {self.expand_choices}, depths {self.depth_choices}, {len(self.resolutions)} resolutions"
        )


class OFAMobileNetV3Space(MBConvSpace):
    """Once-for-All MobileNetV3 (``width_mult`` 1.0 or 1.2): 5 elastic units of up to 4 MBConv layers,
    k in {3,5,7}, e in {3,4,6}, d in {2,3,4}, resolution 128..224 step 4 by default."""

    arch_type = OFAMobileNetV3Arch
    name = "ofa_mbv3"
    family = "ofa_mbv3"

    BASE = [16, 16, 24, 40, 80, 112, 160, 960, 1280]

    def __init__(self, width_mult: float = 1.2, **kwargs: Any) -> None:
        if width_mult not in (1.0, 1.2):
            raise choice_error("width_mult", width_mult, [1.0, 1.2], "widths of the official OFA-MobileNetV3 supernets; "
                               "ofa_proxyless_w13 takes any, e.g. space=ofa_proxyless_w13 space.width_mult=0.25")
        self.width_mult = float(width_mult)
        kwargs.setdefault("name", f"ofa_mbv3_w{'12' if width_mult == 1.2 else '10'}")
        b = self.BASE
        wm = self.width_mult
        self.first_conv_width = make_divisible(b[0] * wm)
        self.first_block_width = make_divisible(b[1] * wm)
        widths = [make_divisible(x * wm) for x in b[2:7]]
        self.final_expand_width = make_divisible(b[7] * wm)
        self.last_width = make_divisible(b[8] * wm)
        acts = ["relu", "relu", "h_swish", "h_swish", "h_swish"]
        ses = [False, True, False, True, True]
        strides = [2, 2, 2, 1, 2]
        self.stages = [_Stage(w, s, a, se) for w, s, a, se in zip(widths, strides, acts, ses)]
        super().__init__(**kwargs)

    def first_layers(self, r: int) -> list[LayerSpec]:
        h = conv_out(r, 2)
        c0, c1 = self.first_conv_width, self.first_block_width
        return [
            LayerSpec("first_conv", "conv", (r, r, 3), (h, h, c0), kernel=3, stride=2, act="h_swish"),
            LayerSpec(
                "first_block", "mbconv", (h, h, c0), (h, h, c1), kernel=3, stride=1, expand=1, mid=c0,
                act="relu", idskip=(c0 == c1),
            ),
        ]

    def final_layers(self, shape: tuple[int, int, int]) -> list[LayerSpec]:
        h, w, c = shape
        fe, last = self.final_expand_width, self.last_width
        return [
            LayerSpec("final_expand", "conv", (h, w, c), (h, w, fe), act="h_swish"),
            LayerSpec("pool", "pool", (h, w, fe), (1, 1, fe), act="none", bn=False),
            LayerSpec("feature_mix", "conv", (1, 1, fe), (1, 1, last), act="h_swish", bn=False),
            LayerSpec("classifier", "linear", (1, 1, last), (1, 1, self.n_classes), act="none", bn=False),
        ]

    def to_config(self) -> dict:
        cfg = super().to_config()
        cfg["width_mult"] = self.width_mult
        return cfg


class _ProxylessBase(MBConvSpace):
    arch_type = ProxylessArch
    BASE = [32, 16, 24, 40, 80, 96, 192, 320, 1280]
    STRIDES = [2, 2, 2, 1, 2, 1]

    def _setup_widths(self, wm: float) -> None:
        b = self.BASE
        self.first_conv_width = make_divisible(b[0] * wm)
        self.first_block_width = make_divisible(b[1] * wm)
        widths = [make_divisible(x * wm) for x in b[2:8]]
        self.last_width = make_divisible(b[8] * wm) if wm > 1.0 else b[8]
        self.stages = [_Stage(w, s, "relu6", False) for w, s in zip(widths, self.STRIDES)]

    def first_layers(self, r: int) -> list[LayerSpec]:
        h = conv_out(r, 2)
        c0, c1 = self.first_conv_width, self.first_block_width
        return [
            LayerSpec("first_conv", "conv", (r, r, 3), (h, h, c0), kernel=3, stride=2, act="relu6"),
            LayerSpec(
                "first_block", "mbconv", (h, h, c0), (h, h, c1), kernel=3, stride=1, expand=1, mid=c0,
                act="relu6", idskip=(c0 == c1),
            ),
        ]

    def final_layers(self, shape: tuple[int, int, int]) -> list[LayerSpec]:
        h, w, c = shape
        last = self.last_width
        return [
            LayerSpec("feature_mix", "conv", (h, w, c), (h, w, last), act="relu6"),
            LayerSpec("pool", "pool", (h, w, last), (1, 1, last), act="none", bn=False),
            LayerSpec("classifier", "linear", (1, 1, last), (1, 1, self.n_classes), act="none", bn=False),
        ]


class OFAProxylessSpace(_ProxylessBase):
    """Once-for-All's ProxylessNAS supernet (``width_mult`` 1.3): 5 elastic units of up to 4 layers
    (widths 32/56/104/128/248) and one single-layer unit (416); k in {3,5,7}, e in {3,4,6}, d in {2,3,4}."""

    name = "ofa_proxyless"
    family = "ofa_proxyless"

    def __init__(self, width_mult: float = 1.3, **kwargs: Any) -> None:
        self.width_mult = float(width_mult)
        kwargs.setdefault("name", "ofa_proxyless_w13" if width_mult == 1.3 else f"ofa_proxyless_w{width_mult}")
        self._setup_widths(self.width_mult)
        super().__init__(**kwargs)

    def to_config(self) -> dict:
        cfg = super().to_config()
        cfg["width_mult"] = self.width_mult
        return cfg


class ProxylessMobileSpace(_ProxylessBase):
    """The original ProxylessNAS mobile space (width 1.0, stages 24/40/80/96/192/320, k in {3,5,7},
    e in {3,6}; elastic depth 1..4 as "zero" layers at the end of a unit; input 224). This is the space
    priced by ProxylessNAS's mobile lookup table."""

    name = "proxyless_mobile"
    family = "proxyless_mobile"
    default_expands = (3, 6)
    default_depths = (1, 2, 3, 4)
    default_resolutions = (224,)

    def __init__(self, **kwargs: Any) -> None:
        self.width_mult = 1.0
        self._setup_widths(1.0)
        super().__init__(**kwargs)


# ============================================================================ registry
@register_space("ofa_mbv3_w12")
def _ofa_mbv3_w12(**kw: Any) -> OFAMobileNetV3Space:
    return OFAMobileNetV3Space(width_mult=kw.pop("width_mult", 1.2), **kw)


@register_space("ofa_mbv3_w10")
def _ofa_mbv3_w10(**kw: Any) -> OFAMobileNetV3Space:
    return OFAMobileNetV3Space(width_mult=kw.pop("width_mult", 1.0), **kw)


@register_space("ofa_proxyless_w13")
def _ofa_proxyless(**kw: Any) -> OFAProxylessSpace:
    return OFAProxylessSpace(width_mult=kw.pop("width_mult", 1.3), **kw)


@register_space("proxyless_mobile")
def _proxyless_mobile(**kw: Any) -> ProxylessMobileSpace:
    return ProxylessMobileSpace(**kw)


# ============================================================================ OFA predictor encoding
def ofa_predictor_features(archs: Sequence[MBConvArch]) -> np.ndarray:
    """The 128-d input of Once-for-All's MobileNetV3 accuracy predictor: per slot one-hot kernel
    {3,5,7} (20x3), per slot one-hot expand {3,4,6} (20x3), zeros for inactive slots, then one-hot
    resolution bin ``(r - 112) // 16`` (8 bins)."""
    n = len(archs)
    X = np.zeros((n, 128), dtype=np.float32)
    kmap = {3: 0, 5: 1, 7: 2}
    emap = {3: 0, 4: 1, 6: 2}
    for i, a in enumerate(archs):
        if not isinstance(a, OFAMobileNetV3Arch):
            raise SpaceError(f"the OFA accuracy predictor takes OFA-MobileNetV3 archs; got {type(a).__name__}")
        for s in a.active_slots():
            if a.ks[s] not in kmap or a.e[s] not in emap:
                raise SpaceError(f"slot {s} k{a.ks[s]}e{a.e[s]} is outside the OFA predictor's k{{3,5,7}} x e{{3,4,6}}")
            X[i, s * 3 + kmap[a.ks[s]]] = 1.0
            X[i, 60 + s * 3 + emap[a.e[s]]] = 1.0
        b = (a.r - 112) // 16
        if not 0 <= b < 8:
            raise SpaceError(f"r={a.r} is outside the OFA predictor's resolution range 112..239")
        X[i, 120 + b] = 1.0
    return X


def ofa_predictor_features_arrays(ks: np.ndarray, e: np.ndarray, d: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Vectorised :func:`ofa_predictor_features` from decoded arrays (inactive slots already normalised)."""
    n = ks.shape[0]
    layout = OFAMobileNetV3Arch.LAYOUT
    slot_unit = np.repeat(np.arange(len(layout)), layout)
    slot_pos = np.concatenate([np.arange(m) for m in layout])
    active = slot_pos[None, :] < d[:, slot_unit]
    X = np.zeros((n, 128), dtype=np.float32)
    kidx = np.searchsorted([3, 5, 7], ks)
    eidx = np.searchsorted([3, 4, 6], e)
    rows, slots = np.nonzero(active)
    X[rows, slots * 3 + kidx[rows, slots]] = 1.0
    X[rows, 60 + slots * 3 + eidx[rows, slots]] = 1.0
    X[np.arange(n), 120 + (np.asarray(r) - 112) // 16] = 1.0
    return X
