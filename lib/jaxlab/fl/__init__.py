"""The federated engine: the ``Algorithm`` protocol, client executors and the server loop.

    from jaxlab.fl import Simulation, get_algorithm
"""

from jaxlab.fl.algorithm import Algorithm, DataSpec, weighted_mean
from jaxlab.fl.algorithms import get_algorithm
from jaxlab.fl.engine import NonFiniteLossError, Simulation
from jaxlab.fl.executors import STRATEGIES, run_clients

__all__ = ["Algorithm", "DataSpec", "weighted_mean", "get_algorithm", "Simulation", "NonFiniteLossError",
           "STRATEGIES", "run_clients"]
