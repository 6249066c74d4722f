"""Greedy decoding with continuous batching and a shared-prompt-prefix KV cache.

Used by the teacher (``policytune.lm.backends.LocalBackend``), the evaluate stage and the chat engine.
On a CPU the two costs of generation are the prompt's prefill (compute-bound: every prompt
token costs about 2 x params FLOPs) and the decode steps (one forward per new token for the
whole batch). This module removes the two kinds of waste a plain ``model.generate`` on static
batches has:

- **finished rows**: a static batch runs until its longest answer ends. Here an answer that
  reaches a stop token (or ``max_new_tokens``) leaves the batch at once (its rows are dropped
  from the KV cache) and waiting prompts are prefilled and merged in whenever at least
  ``refill_at`` slots are free, so the batch stays full.
- **a repeated prompt prefix**: the teacher's prompts all start with the same system prompt and
  instructions (about half of each prompt). When the prompts of one call share a prefix of at
  least ``min_prefix`` tokens, it is prefilled once and its KV cache is copied into each new
  batch; only the per-prompt suffix is computed.

Positions are explicit per row (padding sits between the shared prefix and a row's suffix, or
on the left, and is masked), so every answer is computed as if it were decoded alone, up to
float rounding: greedy outputs equal ``model.generate``'s (the evaluate tests check).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence


END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")  # chat templates' end-of-turn markers


def collect_stop_ids(settings: Sequence = (), ids: Sequence = (), tokenizer=None,
                     marker_id: Optional[Callable] = None, sequences: tuple = (list, tuple)) -> list:
    """Candidate ids that end an assistant turn, in order, not yet filtered or deduplicated:

    - each of ``settings`` (an eos setting: one id, several ids as one of ``sequences``, or None),
      flattened;
    - each of ``ids`` (single ids, appended as they are; None skipped);
    - then, for each of :data:`END_OF_TURN_TOKENS`, ``marker_id(tokenizer, token)`` unless it is
      None (``marker_id`` decides whether the tokenizer has that marker: :func:`vocab_marker_id`,
      :func:`template_marker_id`).

    The one mechanism behind :func:`stop_token_ids` (decoding), prepare_models' stop ids (written
    into each model folder's generation_config.json, :mod:`policytune.lm.gguf`) and
    ``LocalBackend``'s eos set; each caller filters and deduplicates the candidates its own way.
    """
    out: list = []
    for value in settings:
        if isinstance(value, sequences):
            out += list(value)
        elif value is not None:
            out.append(value)
    out += [i for i in ids if i is not None]
    if marker_id is not None:
        for token in END_OF_TURN_TOKENS:
            tid = marker_id(tokenizer, token)
            if tid is not None:
                out.append(tid)
    return out


def vocab_marker_id(tokenizer, token: str) -> Optional[int]:
    """``token``'s id if the tokenizer knows it (an int, not the unk id, not negative), else None."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
        return tid
    return None


def template_marker_id(tokenizer, token: str):
    """``token``'s id if the chat template uses it and it is in the vocabulary, else None."""
    if token in (tokenizer.chat_template or "") and token in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(token)
    return None


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an assistant turn: generation_config eos, tokenizer eos, <|im_end|>."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = collect_stop_ids([eos], [tokenizer.eos_token_id], tokenizer, vocab_marker_id)
    return list(dict.fromkeys(int(i) for i in ids))


def render_prompts(tokenizer, prompts: Sequence[list[dict]]) -> list[list[int]]:
    """Chat messages -> token ids of the chat template with the generation prompt."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def left_pad(seqs: Sequence[list[int]], pad: int):
    """(ids, attention mask) of ``seqs`` left-padded to a common width."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        attn[row, width - len(seq):] = 1
    return ids, attn


def pad_cache_left(cache, extra: int) -> None:
    """Prepend ``extra`` zero positions to every layer of a KV cache (masked by the caller)."""
    import torch

    if extra <= 0:
        return
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name)
            z = torch.zeros((*t.shape[:2], extra, t.shape[3]), dtype=t.dtype, device=t.device)
            setattr(layer, name, torch.cat([z, t], dim=2))


def merge_batches(cache, attn, new_cache, new_attn):
    """Stack a freshly prefilled batch (``new_cache``, mask ``new_attn``) under a running one:
    the narrower cache and mask are left-padded (masked) to a common width. Modifies ``cache``
    in place (in-place growth switched on) and returns the merged mask."""
    import torch

    t_old, t_new = attn.shape[1], new_attn.shape[1]
    width = max(t_old, t_new)
    pad_cache_left(cache, width - t_old)
    pad_cache_left(new_cache, width - t_new)
    for a, b in zip(cache.layers, new_cache.layers):
        a.keys, a.values = torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values])
    grow_in_place(cache)

    def pad(m, k):
        return torch.cat([torch.zeros((m.shape[0], k), dtype=m.dtype, device=m.device), m], 1)
    return torch.cat([pad(attn, width - t_old), pad(new_attn, width - t_new)], 0)


def _growing_layer_class():
    """A transformers ``DynamicLayer`` whose keys/values live in a buffer with spare room along
    the sequence, so a decode step writes its one new position in place instead of copying the
    whole cache (``torch.cat``) in every layer at every step. ``keys``/``values`` stay plain
    tensors (views of the buffer), so everything that reads or replaces them (attention,
    ``batch_select_indices``, the merging and trimming in :func:`decode_greedy`) works
    unchanged; a replaced tensor is copied into a fresh buffer at the next update."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        @staticmethod
        def _room(buf, cur, extra: int):
            """``buf`` if ``cur`` is its prefix view with ``extra`` free positions after it,
            else a new buffer (50% spare, at least 64) holding a copy of ``cur``."""
            if (buf is not None and cur.data_ptr() == buf.data_ptr() and cur.shape[:2] == buf.shape[:2]
                    and cur.stride() == buf.stride() and cur.shape[2] + extra <= buf.shape[2]):
                return buf
            n = cur.shape[2] + extra
            new = torch.empty((*cur.shape[:2], n + max(64, n // 2), cur.shape[3]), dtype=cur.dtype,
                              device=cur.device)
            new[:, :, :cur.shape[2]] = cur
            return new

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
                return super().update(key_states, value_states, *args, **kwargs)
            n, k = self.keys.shape[2], key_states.shape[2]
            self._kbuf = self._room(getattr(self, "_kbuf", None), self.keys, k)
            self._vbuf = self._room(getattr(self, "_vbuf", None), self.values, k)
            self._kbuf[:, :, n:n + k] = key_states
            self._vbuf[:, :, n:n + k] = value_states
            self.keys, self.values = self._kbuf[:, :, :n + k], self._vbuf[:, :, :n + k]
            return self.keys, self.values

    return GrowingLayer


_GROWING = None


def grow_in_place(cache) -> None:
    """Switch every plain ``DynamicLayer`` of a ``DynamicCache`` to in-place growth (see
    :func:`_growing_layer_class`); sliding-window and other layer kinds are left as they are."""
    global _GROWING
    from transformers.cache_utils import DynamicLayer

    _GROWING = _GROWING or _growing_layer_class()
    for layer in getattr(cache, "layers", []):
        if type(layer) is DynamicLayer:
            layer.__class__ = _GROWING


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix every sequence shares (at most the shortest length - 1, so
    every sequence keeps at least one token of its own to produce its first logits)."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return max(n, 0)


def decode_greedy(model, ids: Sequence[list[int]], stops: set[int] | Sequence[int], pad: int,
                  max_new_tokens: int, batch_size: int, *, refill_at: Optional[int] = None,
                  min_prefix: int = 32, on_done: Optional[Callable[[int, list[int]], None]] = None,
                  stats: Optional[dict] = None) -> list[list[int]]:
    """Greedy continuations of every prompt in ``ids``; returns the generated ids per prompt,
    up to and including the first stop token (or ``max_new_tokens`` ids without one).

    ``on_done(i, tokens)`` is called as each prompt finishes (progress, streaming to disk).
    ``stats`` (if given) receives prompt/prefix/generated token counts and the prefix length.
    """
    import torch

    stops = set(int(s) for s in stops)
    device = next(model.parameters()).device
    n = len(ids)
    out: list[Optional[list[int]]] = [None] * n
    if n == 0:
        return []
    queue = sorted(range(n), key=lambda i: -len(ids[i]))
    refill_at = refill_at or max(1, batch_size // 4)

    # Shared prefix: prefilled once, copied into every new batch.
    plen = common_prefix_len(ids) if n > 1 else 0
    prefix_cache = None
    if plen >= min_prefix:
        with torch.inference_mode():
            prefix_cache = model(input_ids=torch.tensor([list(ids[0][:plen])], device=device),
                                 use_cache=True).past_key_values
    else:
        plen = 0
    if stats is not None:
        stats.update(prompts=n, prompt_tokens=sum(len(s) for s in ids), prefix_tokens=plen,
                     prefilled_tokens=plen + sum(len(s) - plen for s in ids), generated_tokens=0)

    rows: list[int] = []          # prompt index of each batch row
    toks: list[list[int]] = []    # generated tokens of each batch row
    cache = attn = pos = last = None

    def finish(keep: list[int]) -> None:
        nonlocal cache, attn, pos, last, rows, toks
        for r in range(len(rows)):
            if r not in keep:
                out[rows[r]] = toks[r]
                if stats is not None:
                    stats["generated_tokens"] += len(toks[r])
                if on_done:
                    on_done(rows[r], toks[r])
        if len(keep) == len(rows):
            return
        if keep:
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(idx)
            attn, pos, last = attn[idx], pos[idx], last[idx]
            # drop leading columns that are padding for every remaining row
            lead = int((attn.sum(0) == 0).long().cumprod(0).sum())
            if lead:
                attn = attn[:, lead:]
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
        else:  # batch empty: the next prompts start a fresh cache
            cache = attn = pos = last = None
        rows, toks = [rows[r] for r in keep], [toks[r] for r in keep]

    def prefill(new: list[int]):
        """KV cache, mask, next positions and first tokens of the prompts ``new``."""
        s_ids, s_attn = left_pad([list(ids[i][plen:]) for i in new], pad)
        s_pos = plen + (s_attn.cumsum(-1) - 1).clamp(min=0)
        kw = {}
        if prefix_cache is not None:
            pc = copy.deepcopy(prefix_cache)
            pc.batch_repeat_interleave(len(new))
            kw["past_key_values"] = pc
            full_attn = torch.cat([torch.ones((len(new), plen), dtype=torch.long), s_attn], 1)
        else:
            full_attn = s_attn
        o = model(input_ids=s_ids.to(device), attention_mask=full_attn.to(device),
                  position_ids=s_pos.to(device), use_cache=True, logits_to_keep=1, **kw)
        return o.past_key_values, full_attn.to(device), (plen + s_attn.sum(-1)).to(device), o.logits[:, -1].argmax(-1)

    with torch.inference_mode():
        while queue or rows:
            free = batch_size - len(rows)
            if queue and (free >= refill_at or not rows):
                new = [queue.pop(0) for _ in range(min(free, len(queue)))]
                n_cache, n_attn, n_pos, n_last = prefill(new)
                if cache is None:
                    cache, attn, pos, last = n_cache, n_attn, n_pos, n_last
                else:  # merge: left-pad the shorter cache, stack along the batch
                    attn = merge_batches(cache, attn, n_cache, n_attn)
                    pos, last = torch.cat([pos, n_pos]), torch.cat([last, n_last])
                grow_in_place(cache)
                rows += new
                toks += [[int(t)] for t in n_last.tolist()]
                finish([r for r in range(len(rows)) if toks[r][-1] not in stops and len(toks[r]) < max_new_tokens])
                continue
            attn = torch.cat([attn, torch.ones((attn.shape[0], 1), dtype=attn.dtype, device=device)], 1)
            o = model(input_ids=last[:, None], attention_mask=attn, position_ids=pos[:, None],
                      past_key_values=cache, use_cache=True)
            cache, last, pos = o.past_key_values, o.logits[:, -1].argmax(-1), pos + 1
            for r, t in enumerate(last.tolist()):
                toks[r].append(int(t))
            finish([r for r in range(len(rows)) if toks[r][-1] not in stops and len(toks[r]) < max_new_tokens])
    return out  # type: ignore[return-value]


def split_stop(tokens: Sequence[int], stops: set[int] | Sequence[int]) -> tuple[list[int], int, str]:
    """(body without the stop token, n generated incl. the stop, "eos" | "length")."""
    cut = next((j for j, x in enumerate(tokens) if x in stops), None)
    if cut is None:
        return list(tokens), len(tokens), "length"
    return list(tokens[:cut]), cut + 1, "eos"


def generate_continuous(model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int, batch_size: int,
                        progress=None, refill_at: Optional[int] = None) -> list[dict]:
    """Chat prompts -> [{answer, n_tokens, finish}] in prompt order, greedy, with continuous
    batching (:func:`decode_greedy`: finished answers leave the batch, waiting questions join, a
    shared prompt prefix is prefilled once). ``progress``: anything with ``update(n)``. Used by the
    evaluate stage and the raft stage's self-distilled answers."""
    ids = render_prompts(tokenizer, prompts)
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    done = (lambda i, t: progress.update(1)) if progress else None
    out = []
    for toks in decode_greedy(model, ids, stops, pad, max_new_tokens, batch_size, refill_at=refill_at, on_done=done):
        body, n_tokens, finish = split_stop(toks, stops)
        out.append({"answer": tokenizer.decode(body, skip_special_tokens=True).strip(),
                    "n_tokens": n_tokens, "finish": finish})
    return out
