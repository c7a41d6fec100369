"""Verification: how far one backend's outputs are from the reference's, and whether that is
within the contract's tolerance (Dice/IoU, parity per output, per-pair verdicts).

numpy only, and below the runtime: it compares arrays and never opens a runner, so the runtime's
own self-check, export validation, lga-bench and training can all use it without a cycle.
"""
