"""The lab: experiment drivers that train, prune, export and measure many models in one command.

``ablation`` (the paper's table 2), ``sweep`` (sparsity sweep), ``recovery`` (pruning's cost per
class and over fine-tuning length), ``pareto`` (accuracy against latency), ``default_model`` (the
shipped model's build chain) and ``stages`` (their resumable stage runner). The product's own
commands (train, prune, export, evaluate) live one level up; these only drive them.
"""
