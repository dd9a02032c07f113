import os
import shutil
import sys
import tempfile

# Tests import helper modules (e.g. surprise_oracle) that live beside them.
sys.path.insert(0, os.path.dirname(__file__))

# XLA compilation dominates the tiny collect runs (about 80% of one), and most tests compile the very
# same programs again (the same tiny config, fresh jit closures). A persistent compilation cache that
# lives for one session only: an identical program is compiled once and loaded thereafter, in this
# process and in the subprocesses the tests start (they inherit the environment). It is set before
# jax is imported; compile counts (`jitted._cache_size()`) count traces and are unaffected.
_JIT_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JIT_CACHE = tempfile.mkdtemp(prefix="jaxforget-test-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JIT_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    if _JIT_CACHE is not None:
        shutil.rmtree(_JIT_CACHE, ignore_errors=True)


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
