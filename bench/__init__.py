"""pyalexnet's benchmarks: ``python bench/compare.py`` (or ``python -m bench.compare``) is the command
line; its sections (conv_relu_maxpool, softmax_cross_entropy, train_step) and their helpers (checks,
rows, timing, machine, report) never import it back. ``gpu_summary.py`` and ``kernel_report.py`` are
commands of their own."""
