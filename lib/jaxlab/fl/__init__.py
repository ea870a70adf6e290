"""jaxlab.fl."""
