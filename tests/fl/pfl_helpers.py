"""Small fixtures shared by the DBE, GPFL and FedCP tests."""

import numpy as np

from jaxlab.data import load_dataset, make_federated
from jaxlab.models import get_model


def tiny_data(num_clients=3):
    x, y, nc = load_dataset("digits8")
    return make_federated(x[:600], y[:600], num_clients, "dir", alpha=1.0, num_classes=nc, seed=3)


def tiny_model(num_classes=10, hidden=8):
    return get_model("mlp", num_classes, hidden=(hidden,))


def numeric_grad(f, theta, eps=1e-6):
    """Central finite differences of a scalar float64 function of a flat vector."""
    g = np.zeros_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = eps
        g[i] = (f(theta + e) - f(theta - e)) / (2 * eps)
    return g
