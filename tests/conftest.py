from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The reference data mirror (../shared/data beside the project)."""
    if not DATA.is_dir():
        pytest.skip(f"reference data not found at {DATA}")
    return DATA


@pytest.fixture(autouse=True)
def _mirror(monkeypatch, tmp_path_factory):
    """Every test reads assets from the shared mirror and never touches the user's cache."""
    from hwnas.predictors.assets import set_default_mirror

    monkeypatch.setenv("HWNAS_ASSETS_MIRROR", str(DATA))
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    set_default_mirror(None)  # a search run in-process sets the config's mirror globally
    yield
    set_default_mirror(None)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Run a module's tests with one torch thread: small convolutions are much faster single-threaded
    on a busy shared CPU. Use with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
