"""The shipped configs/<model>/config.json files (the paper's models, for `python -m jaxforget.plan`): each is read
by plan's own reader and builds, abstractly, a model with exactly the published parameter count."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import pytest
from flax import nnx

from jaxforget import models
from jaxforget.plan import plan_arch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Total parameters as published (model cards; Pythia's table of sizes), embeddings, norms and biases included.
PUBLISHED = {
    "olmo-1b": 1_176_764_416,
    "olmo-7b": 6_888_095_744,
    "olmo-2-1b": 1_484_916_736,
    "olmo-2-7b": 7_298_617_344,
    "olmo-2-13b": 13_716_198_400,
    "pythia-1b": 1_011_781_632,
    "pythia-1.4b": 1_414_647_808,
    "pythia-2.8b": 2_775_208_960,
    "pythia-6.9b": 6_857_302_016,
    "pythia-12b": 11_846_072_320,
    "llama-3.2-1b": 1_235_814_400,
}


def test_every_shipped_config_is_listed():
    assert sorted(p.name for p in CONFIGS.iterdir() if (p / "config.json").is_file()) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_config_plans_the_published_model(name):
    arch = plan_arch(CONFIGS / name)  # what `python -m jaxforget.plan --model.path configs/<name>` reads
    model = nnx.eval_shape(lambda: models.Decoder(arch, rngs=nnx.Rngs(0)))  # no weight allocated
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == PUBLISHED[name]
