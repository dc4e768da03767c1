"""The book's experiments: tasks, training, baselines, fine-tuning, compression, proofs and figures."""
