# cython: language_level=3
"""Argument guards of the compiled kernels: NumPy arrays in, raw pointers out.

The kernels take ``numpy.ndarray`` objects and read their data pointers directly
(``PyArray_DATA``) instead of acquiring typed memoryviews: a memoryview costs ~0.5-1 us
per array per call, which is most of a small layer's kernel time. The checked kernel
table (``nanodl/backend/table.py``) has already validated every argument and the
Python wrapper made inputs C-contiguous, so these guards only make sure that even an
unchecked call (``table.compute.<name>``) can never read or write out of bounds: a
few macro tests per array, and a ValueError if one fails.
"""
cimport numpy as cnp

cdef inline int float_type(cnp.ndarray a) except -1:
    """NPY_FLOAT32 or NPY_FLOAT64 for a C-contiguous float array, else ValueError."""
    cdef int typenum = cnp.PyArray_TYPE(a)
    if (typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64) or not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError("nanodl native kernel: expected a C-contiguous float32 or float64 array "
                         "(call the checked kernel table, not its compute functions, with other input)")
    return typenum

cdef inline int like(cnp.ndarray a, int typenum, cnp.npy_intp size, bint written) except -1:
    """``a`` holds ``size`` elements of ``typenum`` in C order (and is writeable if written)."""
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_SIZE(a) != size
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or (written and not cnp.PyArray_ISWRITEABLE(a))):
        raise ValueError("nanodl native kernel: arrays of one call must share dtype and size, be "
                         "C-contiguous and, when written, writeable (call the checked kernel table)")
    return 0
