"""jaxlab.serving."""
