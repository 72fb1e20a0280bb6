"""BlueFog: decentralized distributed training over MPI for PyTorch and TensorFlow."""

__version__ = "0.4.0.dev0"
