"""The chat format shared by augment (writes it), train (learns it) and evaluate (prompts with it).

A training row is ``{"messages": [system, user, assistant], ...lineage}``. The same tokenizer
chat template renders it at training and at inference; ``template_sha`` fingerprints that
template so the evaluate stage can refuse an adapter trained under a different one.
"""

from __future__ import annotations

from policytune.core.records import sha256_text

DEFAULT_SYSTEM_PROMPT = (
    "You are a policy assistant. Answer questions about the organisation's policies "
    "accurately and concisely."
)

# ChatML, used only when a model ships no chat template (e.g. the tiny CI Llama).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def to_messages(question: str, answer: str | None = None, system: str = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    msgs = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": question})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def template_sha(tokenizer) -> str:
    """Fingerprint of the chat template a tokenizer renders with."""
    tmpl = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(tmpl, dict):  # some tokenizers carry named templates
        tmpl = tmpl.get("default", "") or ""
    return sha256_text(tmpl)[:16]
