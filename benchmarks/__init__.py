"""Benchmarks, installed as ``fastmine_benchmarks``.

``fastmine bench`` (an entry point of the ``fastmine.commands`` group) is ``bench_step.main``:
``bench_step`` plans the measurements and prints the table, ``step_configs`` builds both
sides of a configuration, ``step_timing`` times them, ``step_replay`` checks they log the
same losses, ``step_profile`` says where the time goes; ``reference`` is the eager yardstick.
``bench_multi``, ``bench_sharded`` and ``bench_kernels`` are scripts of their own
(``python -m fastmine_benchmarks.<name>``); ``common`` is what they all share.
"""
