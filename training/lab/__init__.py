"""The lab: experiment drivers that train, prune, export and measure many models in one command.

``ablation`` (the paper's table 2), ``sweep`` (sparsity sweep), ``recovery`` (pruning's cost per
class and over fine-tuning length), ``pareto`` (accuracy against latency), ``default_model`` (the
shipped model's build chain), ``stages`` (their resumable stage runner), ``settings`` (the
settings they share: evaluation, training stages) and ``report`` (the dated header of every
report they write). The product's own commands (train, prune, export, evaluate) live one level
up; these only drive them.
"""
