"""Seeing inside training: the profiler, op costs, and the diagnosis of a model and its curves.

``nanodl.profile`` (``profiler.py``) times every op of a block against this machine's
measured rates, with the analytic FLOPs and bytes of ``costs.py``;
``nanodl.diagnose`` (``diagnose.py``) looks at one batch of a model;
``History.diagnose()`` (``curves.py``) reads the learning curves. This package's
``__init__`` imports nothing, so the core (``callbacks``, ``nn``) can import the
parts it needs without a cycle. Walkthroughs: ``docs/profiling.md`` and
``docs/diagnosing.md``.
"""
