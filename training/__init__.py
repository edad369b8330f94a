"""Offline pipeline: data, synthetic scenes, training, distillation, pruning, export."""
