"""Pruning, split by job; ``python -m training prune`` is ``training.pruning.command``.

- ``settings``: what a request may ask for, ``PruneSettings`` and ``FinetuneSettings``, the one
  place their options are checked (no torch);
- ``units``: what can be pruned in a SegModel, counting, importance, calibration data;
- ``structured``: torch-pruning structured pruning of one ratio (``prune_by_ratio``) and the
  MACs search, with the MobileViT attention attributes kept in step;
- ``unstructured``: magnitude pruning to zeros, kept zero through fine-tuning;
- ``finetune``: the training loop started from a pruned checkpoint;
- ``request``: one step of the K-step schedule (``prune_schedule_step``) and the whole request
  (``prune_and_finetune``);
- ``command``: the command line.
"""
