"""jaxlab.utils."""
