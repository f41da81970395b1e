"""Seeing inside training: the profiler, op costs, and the diagnosis of a model and its curves.

``nanodl.profile`` (``profiler.py``, with the FLOPs and bytes of ``costs.py``),
``nanodl.diagnose`` (``diagnose.py``: one batch of a model), ``History.diagnose()``
(``curves.py``: the learning curves). This ``__init__`` imports nothing, so the core can
import the parts it needs without a cycle. See ``docs/profiling.md``, ``docs/diagnosing.md``.
"""
