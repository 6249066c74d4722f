"""The two decode speed-ups under every local model: grouped-query attention without copying
key/value heads when a padding mask is present (policytune.lm.loading._sdpa_gqa), and a KV cache
that grows in place (policytune.lm.generation.grow_in_place). Both must change no output. Also
the stop ids of decoding, prepare_models and the local backend (one core, three callers).

The models are random 2-layer Llamas whose query heads share key/value heads in groups of 2
(SmolLM2 has 3: enable_gqa everywhere) and of 4 (Qwen2.5 has 6-7: decode steps fold the group
into the query length), built from a config in the test (no download), saved and loaded
through policytune.lm.loading.load_causal_lm the way every stage loads its models.
"""

from __future__ import annotations

import pytest
import torch

from policytune.lm import generation as G
from policytune.lm import loading
@pytest.fixture(scope="module", params=[4, 8], ids=["groups2", "groups4"])
def gqa_dir(request, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=request.param, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    out = tmp_path_factory.mktemp("gqa")
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lm(gqa_dir):
    return loading.load_causal_lm(gqa_dir, dtype="float32", device="cpu")


def padded_batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 97, (3, 11))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids, mask


def test_loaded_models_use_gqa_attention_with_same_outputs_and_grads(lm, gqa_dir):
    assert lm.config._attn_implementation == loading.GQA_SDPA
    stock = stock_sdpa(gqa_dir)
    ids, mask = padded_batch()
    outs = []
    for m in (lm, stock):
        m.zero_grad()
        logits = m(input_ids=ids, attention_mask=mask).logits
        (logits[mask.bool()] ** 2).mean().backward()  # training goes through the same kernel
        outs.append((logits.detach(), m.model.layers[0].self_attn.k_proj.weight.grad.clone()))
    (a, ga), (b, gb) = outs
    valid = mask.bool()
    torch.testing.assert_close(a[valid], b[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    lm.zero_grad()


def test_gqa_attention_is_called_for_masked_batches(lm, monkeypatch):
    """The fast path really runs (not silently the stock one) when a mask is present."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, **kw):
        calls.append(kw.get("enable_gqa", False))
        return real(*a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ids, mask = padded_batch()
    with torch.no_grad():
        lm(input_ids=ids, attention_mask=mask)
    assert calls and all(calls)


def test_growing_cache_writes_in_place_and_survives_replacement(lm):
    ids, mask = padded_batch()
    with torch.no_grad():
        out = lm(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = out.past_key_values
        G.grow_in_place(cache)
        layer = cache.layers[0]
        step = lambda: lm(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True,  # noqa: E731
                          attention_mask=torch.ones(3, layer.keys.shape[2] + 1, dtype=torch.long))
        step()
        ptr, n = layer.keys.data_ptr(), layer.keys.shape[2]
        step()
        assert layer.keys.data_ptr() == ptr and layer.keys.shape[2] == n + 1  # no copy of the cache
        before = layer.keys[1:].clone()
        cache.batch_select_indices(torch.tensor([1, 2]))  # a finished row leaves: a new tensor
        step_two = lm(input_ids=torch.tensor([[5], [6]]), past_key_values=cache, use_cache=True)
        assert step_two.logits.shape[0] == 2
        torch.testing.assert_close(layer.keys[:, :, :n + 1], before, rtol=0, atol=0)
        assert layer.keys.shape[2] == n + 2


def stock_sdpa(gqa_dir):
    m = loading.load_causal_lm(gqa_dir, dtype="float32", device="cpu")
    m.set_attn_implementation("sdpa")
    assert m.config._attn_implementation == "sdpa"
    return m


def test_decode_greedy_matches_stock_generate_alone_on_a_gqa_model(lm, gqa_dir):
    """decode_greedy (fast attention, growing cache, continuous batching) gives the tokens of
    stock transformers (repeat_kv attention, torch.cat cache) generating each prompt alone."""
    stock = stock_sdpa(gqa_dir)
    torch.manual_seed(2)
    prompts = [torch.randint(3, 97, (n,)).tolist() for n in (5, 17, 9, 30, 3, 12, 21)]
    alone = []
    for p in prompts:
        out = stock.generate(input_ids=torch.tensor([p]), max_new_tokens=70, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
        alone.append(out[0, len(p):].tolist())
    # 70 new tokens: every row's buffer outgrows its first 64 spare positions at least once
    got = G.decode_greedy(lm, prompts, stops=[], pad=0, max_new_tokens=70, batch_size=3, refill_at=1)
    assert got == alone


class _Tok:
    """The tokenizer attributes the stop-id functions read."""

    eos_token_id, unk_token_id = 2, 0
    chat_template = "{{ '<|im_start|>' + m + '<|im_end|>' }}"
    _vocab = {"<|im_end|>": 5, "<|eot_id|>": 7}

    def convert_tokens_to_ids(self, token):
        return self._vocab.get(token, self.unk_token_id)

    def get_vocab(self):
        return dict(self._vocab)


def test_stop_ids_of_decoding_prepare_and_the_backend_share_one_core():
    from types import SimpleNamespace

    from policytune.lm.gguf import _stop_ids

    tok = _Tok()
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[7, 2]))
    # decoding: generation_config eos, tokenizer eos, every end-of-turn marker in the vocabulary
    assert G.stop_token_ids(model, tok) == [7, 2, 5]
    # prepare_models (generation_config.json): tokenizer eos first, markers the template uses
    assert _stop_ids(tok, SimpleNamespace(eos_token_id=[7, 2])) == [2, 7, 5]
    # LocalBackend: eos ids only, as a set
    assert set(G.collect_stop_ids([model.generation_config.eos_token_id], [tok.eos_token_id])) == {2, 7}
    assert G.collect_stop_ids([None, (3, 4)], [None, 9]) == [3, 4, 9]
    assert G.collect_stop_ids([(3, 4)], sequences=()) == [(3, 4)]
    assert G.stop_token_ids(SimpleNamespace(), tok) == [2, 5, 7]
