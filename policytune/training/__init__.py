"""Layer 4 — training: chat rows -> token batches -> LoRA fine-tuning loop (DDP, early stopping,
checkpoints) -> adapter / merged model export."""
