"""The ground side: replaying a flight bag offline or against a live node (``bag_eval``), bag
I/O, scoring, overlay panels, and the harness that runs nodes in child processes."""
