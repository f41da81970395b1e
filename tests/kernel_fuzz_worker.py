"""The fuzzer's subprocess: reads fuzz cases (one JSON line each) and writes verdicts.

Run by ``test_fuzz_kernels.py``, so that a kernel that crashes the interpreter
(a segfault in compiled code) fails one test instead of killing the test run.
"""
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    from kernel_cases import fuzz_verdict
    from nanodl.backend import kernels_native, kernels_numpy

    tables = [kernels_numpy.TABLE] + ([kernels_native.TABLE] if kernels_native is not None else [])
    print(json.dumps({"ready": [t.name for t in tables]}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        try:
            why = fuzz_verdict(case, tables)
        except Exception:  # a broken case (or fuzzer) is reported, not fatal to the worker
            why = "the fuzz case itself failed:\n" + traceback.format_exc()
        print(json.dumps({"why": why}), flush=True)


if __name__ == "__main__":
    main()
