"""The crossbar runtime: engine, Cython kernels and their NumPy twins, training, energy, data.

OpenMP threads that spin after a parallel region starve the BLAS threads on small machines,
so unless the user chose otherwise the kernels' OpenMP runtime is told to sleep when idle.
This must happen before the compiled kernels load (libgomp reads it once).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
