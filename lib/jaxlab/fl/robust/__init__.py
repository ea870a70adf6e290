"""jaxlab.fl.robust."""
