"""minitron: Minitron structured pruning and knowledge distillation for Hugging Face causal LMs."""
