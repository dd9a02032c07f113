"""HF config.json read exactly as transformers reads it, or refused (issue 25, cases 3 and 4)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxforget import models
from tests.models import tiny_hf

TOL = 1e-4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """config.json of each tiny family, saved once by transformers (read_arch needs no weights)."""
    out = {}
    for case in ("llama", "gpt2"):
        path = tmp_path_factory.mktemp(case)
        tiny_hf.save(case, path, tokenizer=False)
        out[case] = (path / "config.json").read_text()
    return out


def _config_only(saved, case, path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(saved[case])
    return path


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("case", ["llama", "gpt_neox"])
def test_tied_config_with_a_distinct_head_in_the_weights_loads_untied_as_transformers_does(case, tmp_path):
    """tie_word_embeddings true, but the safetensors hold their own (different) head: transformers keeps the
    two apart, so the logits use the saved head; jaxforget's must equal them."""
    tiny_hf.save(case, tmp_path, tokenizer=False)  # untied: lm_head / embed_out saved beside the embedding
    _edit_config(tmp_path, tie_word_embeddings=True)
    hf = tiny_hf.load_hf(tmp_path)
    head = hf.get_output_embeddings().weight
    assert head.data_ptr() != hf.get_input_embeddings().weight.data_ptr()  # transformers did not tie them
    model, _ = models.load(tmp_path, tokenizer=False)
    assert model.arch.tie_embeddings is False
    ids, mask = tiny_hf.batch()
    ref = tiny_hf.hf_logits(hf, ids, mask)
    got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert np.abs(got - ref)[mask.astype(bool)].max() <= TOL
    # the old behaviour (tied, the saved head dropped) gives other logits: the test tells the two apart
    tied_hf = tiny_hf.load_hf(tmp_path)
    tied_hf.get_output_embeddings().weight = tied_hf.get_input_embeddings().weight
    assert np.abs(tiny_hf.hf_logits(tied_hf, ids, mask) - ref)[mask.astype(bool)].max() > 100 * TOL


def test_tied_config_with_a_head_equal_to_the_embedding_stays_tied(tmp_path):
    hf = tiny_hf.save("gpt_neox_sequential", tmp_path, tokenizer=False)  # tied: one tensor
    model, _ = models.load(tmp_path, tokenizer=False)
    assert model.arch.tie_embeddings is True
    ids, mask = tiny_hf.batch()
    got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert np.abs(got - tiny_hf.hf_logits(hf, ids, mask))[mask.astype(bool)].max() <= TOL


@pytest.mark.parametrize("field, value", [
    ("tie_word_embeddings", "false"), ("tie_word_embeddings", 0), ("tie_word_embeddings", None),
    ("attention_bias", "true"), ("mlp_bias", 1), ("use_cache", "false"),
])
def test_a_boolean_field_that_is_not_true_or_false_is_refused(field, value, saved, tmp_path):
    _config_only(saved, "llama", tmp_path)
    _edit_config(tmp_path, **{field: value})
    with pytest.raises(models.UnsupportedConfigError, match=f"config.json: field '{field}' must be true or false"):
        models.read_arch(tmp_path)


@pytest.mark.parametrize("field, value", [("eos_token_id", "1"), ("eos_token_id", [1, "2"]), ("bos_token_id", -1),
                                          ("pad_token_id", 1.5), ("eos_token_id", True)])
def test_a_token_id_that_is_not_an_integer_is_refused(field, value, saved, tmp_path):
    _config_only(saved, "llama", tmp_path)
    _edit_config(tmp_path, **{field: value})
    with pytest.raises(models.UnsupportedConfigError, match=f"config.json: field '{field}' must be a token id"):
        models.read_arch(tmp_path)


def test_gpt2_n_ctx_is_typed_and_a_false_like_integer_is_no_boolean(saved, tmp_path):
    _config_only(saved, "gpt2", tmp_path)
    _edit_config(tmp_path, n_ctx="64")
    with pytest.raises(models.UnsupportedConfigError, match="field 'n_ctx' must be an integer"):
        models.read_arch(tmp_path)
    _edit_config(tmp_path, n_ctx=64, add_cross_attention=0)  # 0 == False in Python, not in JSON
    with pytest.raises(models.UnsupportedConfigError, match="field 'add_cross_attention'=0 is not supported"):
        models.read_arch(tmp_path)


def test_plan_counts_the_head_that_load_keeps_untied(tmp_path):
    from jaxforget.plan import plan_arch

    tiny_hf.save("llama", tmp_path / "w", tokenizer=False)  # its own lm_head.weight beside the embedding
    untied = models.read_arch(tmp_path / "w")
    _edit_config(tmp_path / "w", tie_word_embeddings=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text((tmp_path / "w" / "config.json").read_text())  # config only
    assert plan_arch(tmp_path / "w").n_params() == untied.n_params() == models.load(tmp_path / "w", tokenizer=False)[
        0].arch.n_params()
    assert plan_arch(tmp_path / "c").n_params() == untied.n_params() - untied.vocab_size * untied.d_model
