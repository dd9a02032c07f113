import os
import sys

# Tests import helper modules (e.g. surprise_oracle) that live beside them.
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A private jaxforget cache (built-in worlds and base models) shared by the whole session, so the
    tiny world and base model of the collect tests are built once; the user's cache is never touched."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("JAXFORGET_CACHE")
    os.environ["JAXFORGET_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["JAXFORGET_CACHE"]
    else:
        os.environ["JAXFORGET_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_run(cache, tmp_path_factory):
    """One uninterrupted tiny collect run (3 tasks x 50 upstream examples, one-layer base model, the
    fine-tuned models saved), shared by the tests that read a finished run. Treat it as read-only."""
    from test_collect import tiny

    from jaxforget.collect import collect

    out = tmp_path_factory.mktemp("runs") / "ref"
    assert collect(tiny(out, save_models=True), echo=lambda *_: None) == 0
    return out
