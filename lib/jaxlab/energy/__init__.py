"""jaxlab.energy."""
