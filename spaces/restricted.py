"""A categorical space (NAS-Bench-201, FBNet) restricted to an allowed subset of ops per position.

The pipeline's space reduction writes one for categorical spaces; it is saved as data like any space
(``hwnas.spaces.io.space_spec``: ``{"space": "restricted", "options": {"base": ..., "allowed": ...}}``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import SpaceError, create_space, register_space, sample_genomes


@register_space("restricted")
class RestrictedSpace:
    """A categorical space with an allowed subset of ops per position.

    Genome gene ``p`` indexes ``allowed[p]``; archs, features and predictors are the base space's
    (``batch`` hands predictors an ``ArchBatch`` of the base space, so their fast paths still apply).
    """

    registry_name = "restricted"

    def __init__(self, base: Any = "nasbench201", allowed: Sequence[Sequence[str]] | None = None) -> None:
        """``allowed``: the ops kept at each position (None: all of them)."""
        self.base = create_space(base) if isinstance(base, str) else base
        if not hasattr(self.base, "n_positions"):
            raise SpaceError(f"base={getattr(self.base, 'name', base)!r}: a restricted space needs a categorical space (nasbench201, fbnet)")
        allowed = [list(a) for a in allowed] if allowed is not None else [list(self.base.choices)] * self.base.n_positions
        if len(allowed) != self.base.n_positions:
            raise SpaceError(f"allowed: {len(allowed)} positions given, space {self.base.name} has {self.base.n_positions}")
        for p, a in enumerate(allowed):
            bad = [o for o in a if o not in self.base.choices]
            if bad or not a:
                raise SpaceError(f"allowed[{p}]={a}: each position needs >= 1 op from {list(self.base.choices)}")
        self.allowed = allowed
        self.name = f"{self.base.name}_reduced"
        self.arch_type = self.base.arch_type
        self._map = [np.array([self.base.choices.index(o) for o in a]) for a in allowed]
        self._inv = []
        for m in self._map:
            inv = np.full(len(self.base.choices), -1)
            inv[m] = np.arange(len(m))
            self._inv.append(inv)
        self.genome_sizes = np.array([len(a) for a in allowed], dtype=int)

    n_var = property(lambda self: int(len(self.genome_sizes)))

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(self.n_var, dtype=int), self.genome_sizes - 1

    def to_base(self, genomes: np.ndarray) -> np.ndarray:
        g = np.atleast_2d(np.asarray(genomes)).astype(int)
        return np.stack([self._map[p][g[:, p]] for p in range(self.n_var)], axis=1)

    def encode(self, archs: Sequence[Any]) -> np.ndarray:
        gb = self.base.encode(archs)
        g = np.stack([self._inv[p][gb[:, p]] for p in range(self.n_var)], axis=1)
        if (g < 0).any():
            i, p = np.argwhere(g < 0)[0]
            raise SpaceError(f"arch {self.base.decode(gb[i:i + 1])[0]}: op at position {p} is not in the reduced space ({self.allowed[p]})")
        return g

    def decode(self, genomes: np.ndarray) -> list:
        return self.base.decode(self.to_base(genomes))

    def decode_arrays(self, genomes: np.ndarray) -> Any:
        return self.base.decode_arrays(self.to_base(genomes))

    def batch(self, genomes: np.ndarray) -> Any:
        return self.base.batch(self.to_base(genomes))

    def canonical_genome(self, genomes: np.ndarray) -> np.ndarray:
        return np.atleast_2d(np.asarray(genomes)).astype(int)

    def validate(self, arch: Any) -> Any:
        a = self.base.validate(arch)
        self.encode([a])
        return a

    def to_json(self, arch: Any) -> str:
        return self.base.to_json(self.validate(arch))

    def features(self, archs: Sequence[Any]) -> np.ndarray:
        return self.base.features(archs)

    def sample_genomes(self, n: int, rng: Any = None) -> np.ndarray:
        return sample_genomes(self.genome_sizes, n, rng)

    def sample(self, n: int, rng: Any = None) -> list:
        return self.decode(self.sample_genomes(n, rng))

    def to_config(self) -> dict:
        return {"_target_": "hwnas.spaces.restricted.RestrictedSpace", "base": self.base.name, "allowed": self.allowed}

    def __repr__(self) -> str:
        return f"RestrictedSpace({self.base.name}, sizes={self.genome_sizes.tolist()})"
