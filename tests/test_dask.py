"""Scale: population evaluation element-wise on a Dask cluster gives the local result."""

from __future__ import annotations

import numpy as np
import pytest

from hwnas.search.evaluators import (DaskRunner, DistributedPredictor, EvaluatorError, LocalRunner, make_runner,
                                     wrap_predictors)

from _pipeline_helpers import ToyAccuracy, ToyLatency

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def runner():
    r = DaskRunner(n_workers=2, threads_per_worker=1, processes=False)
    yield r
    r.close()


def test_dask_search_equals_local(runner):
    from hwnas.search.nsga import run_search
    from hwnas.spaces import create_space

    space = create_space("nasbench201")
    acc, lat = ToyAccuracy(space), ToyLatency(space)
    kw = dict(pop_size=16, n_gen=5, seed=4, refine=1, verbose=False)
    local = run_search(space, acc, lat, **kw)
    looped = run_search(space, DistributedPredictor(acc, LocalRunner()), lat, **kw)
    np.testing.assert_array_equal(looped.genomes, local.genomes)
    dacc = DistributedPredictor(acc, runner)
    dist = run_search(space, dacc, lat, **kw)
    assert runner.n_workers == 2
    assert dacc.n_calls == dist.n_evals > 0  # every evaluated arch went through the cluster
    np.testing.assert_array_equal(dist.genomes, local.genomes)
    np.testing.assert_array_equal(dist.accuracy, local.accuracy)
    np.testing.assert_array_equal(dist.latency, local.latency)
    assert dist.n_evals == local.n_evals


def test_tasks_spread_over_both_workers(runner):
    import time

    from hwnas.spaces import create_space

    space = create_space("nasbench201")

    class Slow(ToyAccuracy):
        def predict(self, archs):
            time.sleep(0.02)  # an "expensive" per-arch evaluation
            return super().predict(archs)

    def executed(dask_worker):
        return dask_worker.state.executed_count

    before = runner.client.run(executed)
    archs = space.sample(24, 0)
    vals = DistributedPredictor(Slow(space), runner).predict(archs)
    np.testing.assert_array_equal(vals, ToyAccuracy(space).predict(archs))
    after = runner.client.run(executed)
    done = {w: after[w] - before[w] for w in after}
    assert len(done) == 2 and sum(done.values()) == 24
    assert min(done.values()) >= 4, done  # both workers took a share


def test_pymoo_elementwise_protocol_and_local_runner():
    from hwnas.spaces import create_space

    space = create_space("nasbench201")
    archs = space.sample(5, 1)
    acc = ToyAccuracy(space)
    d = DistributedPredictor(acc, LocalRunner())
    np.testing.assert_allclose(d.predict(archs), acc.predict(archs))
    assert LocalRunner()(lambda x: x * 2, [1, 2]) == [2, 4]


def test_evaluator_config_errors():
    assert isinstance(make_runner({"kind": "local"}), LocalRunner)
    with pytest.raises(EvaluatorError, match="evaluator.kind"):
        make_runner({"kind": "slurm"})
    with pytest.raises(EvaluatorError, match="unknown key"):
        make_runner({"kind": "dask", "workers": 3})
    with pytest.raises(EvaluatorError, match="evaluator.objectives"):
        wrap_predictors({"objectives": ["acc"]}, LocalRunner(), accuracy=1, latency=2)
