"""--data.nll-tokens: the 'paper' and 'builtin' upstream accountings, each against a transformers + torch
recomputation that tokenises the text itself, on a saved tiny HF model; the resolution of 'auto'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxforget.collect.config import CollectConfig, DataConfig, ModelConfig
from jaxforget.data.readers import UpstreamExample
from jaxforget.data.tokenize import TokenizeConfig, tokenize_upstream

torch = pytest.importorskip("torch")
from tests.models import tiny_hf  # noqa: E402  (needs torch)

TEXTS = ["w3 w10 w7 w99 w4 w18", "w5 w6", "w40 w41 w42 w43 w44 w45 w46 w47 w48 w49 w50", "w200"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    tiny_hf.save("llama", path)
    return path


def _torch_mean_nll(model, ids: list[int]) -> float:
    """Mean NLL of tokens 2..end of `ids`, float64 log-softmax."""
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.long)
        logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
        return float(-logp.gather(-1, x[0, 1:, None]).mean())


def _ours(path: Path, policy: str, texts=TEXTS) -> tuple[list, np.ndarray]:
    from jaxforget import models
    from jaxforget.data.batching import collate

    model, tok = models.load(path)
    examples = [UpstreamExample(f"u{i}", t, "web", f"u.jsonl:{i + 1}") for i, t in enumerate(texts)]
    toks = tokenize_upstream(examples, tok, TokenizeConfig(max_len=32, nll_tokens=policy))
    b = collate(toks, np.arange(len(toks)), 32, pad_id=0)
    return toks, np.asarray(models.mean_nll(model, b.input_ids, b.attention_mask, b.loss_mask))


def test_paper_accounting_is_tokenizer_text_scored_from_the_second_token(saved):
    tok = tiny_hf.make_tokenizer()
    hf = tiny_hf.load_hf(saved)
    toks, nll = _ours(saved, "paper", TEXTS[:3])  # TEXTS[3] is one token: nothing to score
    for t, text, got in zip(toks, TEXTS[:3], nll):
        ids = tok(text)["input_ids"]  # exactly what the tokenizer gives, no BOS / EOS added by us
        assert t.ids.tolist() == ids and t.loss_mask.tolist() == [False] + [True] * (len(ids) - 1)
        np.testing.assert_allclose(got, _torch_mean_nll(hf, ids), atol=1e-5)


def test_builtin_accounting_prepends_and_appends_eos(saved):
    tok = tiny_hf.make_tokenizer()
    hf = tiny_hf.load_hf(saved)
    toks, nll = _ours(saved, "builtin")
    for t, text, got in zip(toks, TEXTS, nll):
        ids = [tiny_hf.EOS] + tok(text, add_special_tokens=False)["input_ids"] + [tiny_hf.EOS]
        assert t.ids.tolist() == ids
        np.testing.assert_allclose(got, _torch_mean_nll(hf, ids), atol=1e-5)
    # the two accountings differ (the issue measured up to 0.59 nats/token on the built-in world)
    assert not np.allclose(nll[:3], _ours(saved, "paper", TEXTS[:3])[1], atol=1e-3)


def test_paper_leaves_out_a_one_token_example_naming_it(caplog):
    """Pythia / OLMo / GPT-2 add no BOS: a one-token document has nothing to score; it is left out and
    named (--data.min-tokens), the rest of the run goes on."""
    tok = tiny_hf.make_tokenizer()
    examples = [UpstreamExample("u0", "w1 w2", "web", "u.jsonl:1"), UpstreamExample("u3", "w200", "web", "u.jsonl:4")]
    with caplog.at_level("WARNING", logger="jaxforget.data"):
        assert [t.id for t in tokenize_upstream(examples, tok, TokenizeConfig(nll_tokens="paper"))] == ["u0"]
    assert "'u3' at u.jsonl:4: 1" in caplog.text
    with pytest.raises(ValueError, match="every upstream example has fewer than 3 tokens"):
        tokenize_upstream(examples, tok, TokenizeConfig(nll_tokens="paper", min_tokens=3))


def test_auto_is_builtin_for_the_builtin_model_and_paper_for_a_user_model(tmp_path):
    assert CollectConfig().nll_tokens == "builtin"
    assert CollectConfig(model=ModelConfig(path=tmp_path)).nll_tokens == "paper"
    assert CollectConfig(model=ModelConfig(path=tmp_path), data=DataConfig(nll_tokens="builtin")).nll_tokens == "builtin"
    assert CollectConfig(data=DataConfig(nll_tokens="paper")).nll_tokens == "paper"
