"""A small MLP latency predictor (torch, CPU, full-batch Adam; fits thousands of archs in seconds).

Inputs are :func:`hwnas.predictors.linear.latency_features`; the target is standardised log-latency.
``fit(..., init=other_mlp)`` starts from another MLP's weights (fine-tuning on a few target samples).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .base import Predictor
from .linear import latency_features


class MLPLatencyPredictor(Predictor):
    metric = "latency_ms"

    def __init__(
        self,
        space: Any = None,
        hidden: Sequence[int] = (128, 128),
        epochs: int = 100,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ) -> None:
        if isinstance(space, str):
            from hwnas.spaces import create_space

            space = create_space(space)
        self.space = space
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.net: nn.Module | None = None
        self._ymu = 0.0
        self._ysd = 1.0

    def _build(self, n_in: int) -> nn.Module:
        layers: list[nn.Module] = []
        prev = n_in
        for h in self.hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, 1))
        return nn.Sequential(*layers)

    def fit(self, archs: Sequence[Any], values: Sequence[float], init: "MLPLatencyPredictor | None" = None,
            epochs: int | None = None) -> "MLPLatencyPredictor":
        y = np.asarray(values, dtype=float).reshape(-1)
        if len(y) != len(archs):
            raise ValueError(f"fit: {len(archs)} archs but {len(y)} values; give one latency per arch")
        if (y <= 0).any() or not np.isfinite(y).all():
            raise ValueError("fit: latencies must be positive finite milliseconds")
        X = torch.as_tensor(latency_features(self.space, archs), dtype=torch.float32)
        ly = np.log(y)
        from .threads import torch_seeded

        with torch_seeded(self.seed):  # (the caller's random stream is not reset)
            self._train(X, ly, init, epochs)
        return self

    def _train(self, X: Any, ly: np.ndarray, init: Any, epochs: int | None) -> None:
        if init is not None and init.net is not None:
            import copy

            self.net = copy.deepcopy(init.net)
            self._ymu, self._ysd = init._ymu, init._ysd
        else:
            self.net = self._build(X.shape[1])
            self._ymu, self._ysd = float(ly.mean()), float(ly.std() + 1e-8)
        t = torch.as_tensor((ly - self._ymu) / self._ysd, dtype=torch.float32)[:, None]
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n_ep = self.epochs if epochs is None else int(epochs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(n_ep, 1))
        bs = 1024
        g = torch.Generator().manual_seed(self.seed)
        self.net.train()
        for _ in range(n_ep):
            perm = torch.randperm(len(X), generator=g)
            for i in range(0, len(X), bs):
                j = perm[i : i + bs]
                opt.zero_grad()
                loss = ((self.net(X[j]) - t[j]) ** 2).mean()
                loss.backward()
                opt.step()
            sched.step()
        self.net.eval()

    @torch.no_grad()
    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("MLPLatencyPredictor.predict before fit(); call fit(archs, latencies) first")
        X = torch.as_tensor(latency_features(self.space, archs), dtype=torch.float32)
        out = self.net(X)[:, 0].numpy().astype(float)
        return np.exp(out * self._ysd + self._ymu)
