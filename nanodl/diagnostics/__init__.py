"""Seeing inside training: the profiler, op costs, and the diagnosis of a model and its curves.
Imports nothing, so the core imports the parts without a cycle. See docs/profiling.md,
docs/diagnosing.md.
"""
