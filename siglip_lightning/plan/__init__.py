"""The dry-run planner behind ``siglip-lightning plan``: a configured step's per-device memory and FLOPs,
traced on fake tensors (``trace.py``), weighed by the strategy (``strategy.py``), with the loss's own
cost (``loss_cost.py``), and the largest batch a device takes (``planner.py``). See docs/SCALING.md."""
