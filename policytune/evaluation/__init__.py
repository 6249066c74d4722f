"""Layer 5 — evaluation: answers from base and fine-tuned models, reference scores, paired
bootstrap statistics, and the LLM-as-judge."""
