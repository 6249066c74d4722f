"""Per-example scores of the evaluate stage: BERTScore and embedding similarities with one local
encoder folder (:class:`Scorer`), lexical scores (policytune.evaluation.metrics), and the
reference answer's perplexity under the answering model (:func:`reference_nll`).

- BERTScore P/R/F1 (bert-score, the local encoder path as ``model_type``, no baseline rescale);
- cosine of answer and reference embeddings, relevance = cosine of question and answer
  embeddings; both 0 for an empty answer, as BERTScore does;
- ref_nll / ref_ppl: mean negative log-likelihood (and its exp) of the reference answer's
  assistant tokens (answer + end-of-turn marker) given the same prompt;
- fact_recall / all_facts / contradiction: the reference's key facts the answer states
  (:mod:`policytune.evaluation.facts`; null when the reference states no key fact);
- looping: 1 when the answer repeats a 4-gram 4+ times or hit max_new_tokens
  (:func:`policytune.evaluation.metrics.looping`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from policytune.evaluation import metrics as M
from policytune.evaluation.config import EvaluateError
from policytune.evaluation.facts import fact_scores
from policytune.lm.generation import left_pad


def assistant_ids(tokenizer, prompt: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, assistant ids): the rendered conversation split where the answer starts."""
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(head):
        raise EvaluateError("chat template renders the prompt differently once an assistant turn follows; "
                            "cannot locate the assistant tokens for ref_ppl")
    tail = full[len(head):]
    return (tokenizer(head, add_special_tokens=False)["input_ids"],
            tokenizer(tail, add_special_tokens=False)["input_ids"])


def reference_nll(model, tokenizer, prompts: Sequence[list[dict]], references: Sequence[str],
                  batch_size: int = 8) -> list[float]:
    """Mean NLL (nats/token) of each reference's assistant tokens given its prompt.

    Rows are left-padded (explicit positions), so every answer ends at the last column and the
    vocabulary projection is computed only for the last ``longest answer + 1`` columns.
    """
    import torch

    pairs = [assistant_ids(tokenizer, p, r) for p, r in zip(prompts, references)]
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = [float("nan")] * len(pairs)
    for start in range(0, len(order), max(1, batch_size)):
        batch = order[start:start + batch_size]
        input_ids, attn = left_pad([pairs[i][0] + pairs[i][1] for i in batch], pad)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        n_ans = torch.tensor([len(pairs[i][1]) for i in batch])
        keep = int(n_ans.max()) + 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                           position_ids=pos.to(device), logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)          # predicts the last keep-1 columns
        tgt = input_ids[:, -(keep - 1):].to(device)
        col = torch.arange(keep - 1)
        mask = (col[None, :] >= (keep - 1 - n_ans)[:, None]).to(device)  # the answer's columns
        tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * mask
        nll = -(tok_lp.sum(1) / mask.sum(1).clamp(min=1))
        for row, i in enumerate(batch):
            out[i] = float(nll[row]) if n_ans[row] > 0 else float("nan")
    return out


class Scorer:
    """BERTScore + embedding similarities with one local encoder folder."""

    def __init__(self, encoder_dir: str | Path, num_layers: int = 5, batch_size: int = 32,
                 device: Optional[str] = None, encoder=None):
        from bert_score import BERTScorer

        from policytune.lm.loading import load_encoder

        self.encoder_dir = str(encoder_dir)
        self.encoder = encoder if encoder is not None else load_encoder(self.encoder_dir, device=device)
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.bert = BERTScorer(model_type=self.encoder_dir, num_layers=num_layers, batch_size=batch_size,
                               rescale_with_baseline=False, idf=False, device=device)

    def embed(self, texts: Sequence[str]):
        return self.encoder.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                   batch_size=self.batch_size)

    def bertscore(self, candidates: Sequence[str], references: Sequence[str]):
        """(P, R, F1) lists; an empty candidate or reference scores 0 (bert-score's own rule,
        applied here because bert-score 0.3.13 crashes on empty strings under transformers 5)."""
        n = len(candidates)
        P, R, F = [0.0] * n, [0.0] * n, [0.0] * n
        keep = [i for i in range(n) if candidates[i].strip() and references[i].strip()]
        if keep:
            p, r, f = self.bert.score([candidates[i] for i in keep], [references[i] for i in keep],
                                      batch_size=self.batch_size)
            for j, i in enumerate(keep):
                P[i], R[i], F[i] = float(p[j]), float(r[j]), float(f[j])
        return P, R, F

    def score(self, questions: Sequence[str], answers: Sequence[str], references: Sequence[str]) -> list[dict]:
        """Per-example model-based and lexical scores (no ref_ppl; that needs the LM)."""
        n = len(answers)
        if not n:
            return []
        P, R, F = self.bertscore(answers, references)
        ea, er, eq = self.embed(answers), self.embed(references), self.embed(questions)
        cos = M.cosine_matrix_diag(ea, er)
        rel = M.cosine_matrix_diag(eq, ea)
        rows = []
        for i in range(n):
            empty = not answers[i].strip()
            rows.append({
                "bertscore_p": float(P[i]), "bertscore_r": float(R[i]), "bertscore_f1": float(F[i]),
                "cosine": 0.0 if empty else float(cos[i]),
                "relevance": 0.0 if empty else float(rel[i]),
                **M.lexical_scores(answers[i], references[i]),
                "answer_len": len(M.tokenize(answers[i])),
            })
        return rows


def score_answers(answers: Sequence[dict], nlls: Sequence[float], scorer: Scorer) -> list[dict]:
    scores = scorer.score([a["question"] for a in answers], [a["answer"] for a in answers],
                          [a["reference"] for a in answers])
    rows = []
    for a, s, nll in zip(answers, scores, nlls):
        ppl = math.exp(nll) if math.isfinite(nll) and nll < 700 else float("nan")
        facts = fact_scores(a["answer"], a["reference"])
        rows.append({"qa_id": a["qa_id"], "model": a["model"], **s,
                     "ref_ppl": ppl, "ref_nll": nll,
                     "fact_recall": facts["fact_recall"], "all_facts": facts["all_facts"],
                     "contradiction": facts["contradiction"] if facts["n_ref_facts"] else None,
                     "looping": M.looping(a["answer"], a.get("finish")),
                     "facts_missing": facts["missing"], "facts_contradicted": facts["contradicted"]})
    return rows
