"""pytest-benchmark suites for lenet_triton: training step, inference, per-op; and the report writer."""
