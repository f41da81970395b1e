"""The worker scripts here run under ``mpirun`` (started by test_distributed.py); pytest
must not import them (``--doctest-modules`` would run their module-level code)."""
collect_ignore_glob = ["*.py"]
