"""The former home of the data sets, kept so that existing imports keep working: they live in
lenet_triton.datasets now, one module per data set."""

from .datasets import *  # noqa: F401,F403  (the names of lenet_triton.datasets.__all__)
from .datasets import __all__  # noqa: F401
