"""jaxlab.serving: Chrion (arXiv 2307.11339), CPU + accelerator collaborative RNN inference.

Modules, in the order a request meets them:

* ``onnx_import``: ONNX -> operator DAG; LSTM/GRU/RNN nodes unrolled into per-step cell operators
  (or kept as one lax.scan operator for the compiled single-device path); ORT helpers; model builders.
* ``graph``: the DAG records (``Op``, ``Graph``), fusion of light operators, analytic memory.
* ``cost`` / ``profiler``: devices (real GPU, or an emulated accelerator on a 2nd host device),
  per-operator profiles, transfer fit ``alpha + bytes / beta``, fused-segment calibration.
* ``partition``: list-scheduling simulator, HEFT + local search, exact MILP, latency-optimal and
  memory-optimal plans under an SLO.
* ``executor``: the threaded multi-device engine (jit per fused segment, dependency counters,
  explicit transfers, Poisson streams).
"""
