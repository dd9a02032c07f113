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
