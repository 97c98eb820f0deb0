"""Pure forward/backward pairs on arrays (NumPy or CuPy).

Each op ``<op>`` has ``<op>_forward(x, ...) -> (y, cache)`` and
``<op>_backward(dy, cache) -> dx`` or a tuple ``(dx, dw, db)``; the cache is a small
NamedTuple with documented shapes (idea from the cs231n ``layers.py`` starter code).
Fast paths have a loop-based reference beside them (``*_naive``), and tests make them
agree.
"""
