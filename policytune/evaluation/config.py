"""Configuration of the evaluate stage (``params.yaml`` section ``evaluate``), the metric names
it writes and the model comparisons it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from policytune.core.params import Dtype, NonNegFloat, NonNegInt, ParamsError, PositiveFloat, PositiveInt, Range
from policytune.evaluation.metrics import BootstrapConfig
from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT

# The metrics in per_example.jsonl, in report order.
METRICS = ("fact_recall", "all_facts", "contradiction", "bertscore_p", "bertscore_r", "bertscore_f1", "cosine",
           "relevance", "token_f1", "rouge_l", "bleu", "answer_len", "ref_ppl", "ref_nll", "looping")
# (key prefix in metrics/eval.json, treatment, control), paired over qa_id when both ran.
# delta / delta_rag match the judge stage; rag_effect_* say whether retrieval helped each model.
COMPARISONS = (("delta", "finetuned", "base"), ("delta_rag", "finetuned_rag", "base_rag"),
               ("rag_effect_base", "base_rag", "base"), ("rag_effect_finetuned", "finetuned_rag", "finetuned"))


# Variants in the order a tie is broken in (the simpler one wins a tie).
VARIANTS = ("base", "finetuned", "base_rag", "finetuned_rag")


def best_variant(flat: dict, metric: str = "fact_recall", tiebreak: str = "bertscore_f1") -> str | None:
    """The variant with the highest mean ``metric`` in an eval.json-shaped dict (ties: higher
    ``tiebreak``, then the simpler variant); None when no variant has the metric. The report
    names it and the chatbot answers with it by default."""
    scored = [(flat.get(f"{v}.{metric}.mean"), flat.get(f"{v}.{tiebreak}.mean") or 0.0, -i, v)
              for i, v in enumerate(VARIANTS) if flat.get(f"{v}.{metric}.mean") is not None]
    return max(scored)[3] if scored else None


@dataclass
class RagConfig:
    enabled: bool = field(default=True, metadata={"help": "also evaluate base_rag and finetuned_rag"})
    top_k: PositiveInt = field(default=3, metadata={"help": "chunks retrieved into the prompt"})
    retriever: Literal["hybrid", "dense"] = field(default="hybrid", metadata={
        "help": "hybrid: encoder cosine and BM25 fused by reciprocal rank; dense: encoder cosine only "
                "(both over title + heading + text; policytune/lm/retrieval.py)"})
    max_chars: PositiveInt = field(default=1500, metadata={"help": "each retrieved chunk is cut to this many characters"})


@dataclass
class BertScoreConfig:
    num_layers: PositiveInt = field(default=5, metadata={
        "help": "encoder layer whose token vectors BERTScore compares (5 of 6 for MiniLM-L6, as bert-score "
                "does for every 6-layer model)"})
    batch_size: PositiveInt = field(default=32, metadata={"help": "BERTScore batch size"})


@dataclass
class EvaluateConfig:
    base_dir: str = field(default="models/student", metadata={"help": "base model folder"})
    adapter_dir: str = field(default="models/adapter", metadata={"help": "LoRA adapter folder of the train stage"})
    encoder_dir: str = field(default="models/encoder", metadata={"help": "sentence-transformers folder"})
    max_new_tokens: PositiveInt = field(default=128, metadata={"help": "generation limit per answer"})
    batch_size: PositiveInt = field(default=32, metadata={"help": "questions decoded together (continuous batching; 32: the whole 30-question FAQ at once)"})
    batching: Literal["continuous", "static"] = field(default="continuous", metadata={
        "help": "continuous: a finished answer leaves the batch and a waiting question joins (greedy only); "
                "static: model.generate on fixed batches (also used whenever sampling is on)"})
    do_sample: bool = field(default=False, metadata={"help": "false = greedy decoding (reproducible)"})
    temperature: NonNegFloat = field(default=0.7, metadata={"help": "sampling temperature (do_sample only)"})
    top_p: Annotated[float, Range(gt=0, le=1)] = field(default=0.9, metadata={"help": "nucleus sampling (do_sample only)"})
    repetition_penalty: PositiveFloat = field(default=1.0, metadata={"help": "1.0 = none"})
    seed: int = field(default=0, metadata={"help": "torch seed (matters only with do_sample)"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "system message of every prompt"})
    dtype: Dtype = field(default="auto", metadata={
        "help": "auto (saved dtype; float32 where bf16 is not native) | float32 | bfloat16 | float16"})
    merge_adapter: bool = field(default=True, metadata={"help": "merge LoRA into the weights in memory (faster)"})
    ppl_batch_size: PositiveInt = field(default=8, metadata={"help": "batch size of the reference-perplexity pass"})
    limit: NonNegInt = field(default=0, metadata={"help": "evaluate only the first N test questions (0 = all)"})
    general_check: bool = field(default=True, metadata={
        "help": "also answer the general-skill set (data/general_skills.jsonl) with base and fine-tuned, "
                "closed-book: did fine-tuning cost general ability?"})
    bertscore: BertScoreConfig = field(default_factory=BertScoreConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


class EvaluateError(RuntimeError):
    """Inputs the stage cannot evaluate (missing adapter, template mismatch, bad rows)."""


def check_config(cfg: EvaluateConfig) -> None:
    """The value checks a params type check cannot make; raises ParamsError."""
    if cfg.batch_size < 1 or cfg.max_new_tokens < 1 or cfg.rag.top_k < 1 or not 0 < cfg.bootstrap.ci < 1:
        raise ParamsError("batch_size, max_new_tokens, rag.top_k must be >= 1 and 0 < bootstrap.ci < 1")
    if cfg.batching not in ("continuous", "static"):
        raise ParamsError(f"batching must be continuous or static, got {cfg.batching!r}")
