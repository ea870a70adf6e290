"""jaxlab.fl.comm."""
