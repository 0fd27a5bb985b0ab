"""Training: the model, the data and tokenizer, the loop (harness/train/loop.py, read top to
bottom), diagnostics, distributed and FSDP set-up, live tracking, the FLOPs formula. Imports
`harness.core` and below."""
