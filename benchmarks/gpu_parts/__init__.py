"""The parts of ``benchmarks/gpu_check.py``: shared setup (:mod:`.common`), correctness (Part 1),
throughput and methods (Parts 2, 2b, 3), the engine path (Part 4) and the launch-shape sweep
(Part 5)."""
