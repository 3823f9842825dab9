"""Evaluation: generation metrics (BLEU-4, ROUGE-1/2/L on jieba words), multiple-choice exam accuracy,
batch prediction, export, and per-run reports that `caregpt eval compare` puts side by side."""
