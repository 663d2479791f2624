"""Pure-NumPy engine: activations, costs, initialisation, regularisers, the network.

No files, no logging framework, no tracking: ``save_network`` / ``load_network`` write and read
an ``.npz`` (never pickle) on a file object the caller opened. One row per example throughout.
"""

from nnexp.engine.activations import ACTIVATIONS
from nnexp.engine.costs import COSTS
from nnexp.engine.init import INITS
from nnexp.engine.network import Network, init_network, load_network, save_network
from nnexp.engine.regularizers import PENALTIES

__all__ = [
    "ACTIVATIONS", "COSTS", "INITS", "PENALTIES",
    "Network", "init_network", "load_network", "save_network",
]
