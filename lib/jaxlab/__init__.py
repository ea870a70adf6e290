"""jaxlab: JAX re-implementations of published ML-systems research.

Subpackages are imported lazily by users (``from jaxlab.fl import ...``); importing ``jaxlab``
itself is cheap.
"""

__version__ = "0.1.0"
