"""jaxlab.fl.algorithms."""
