"""fedmatch: federated distribution-matching methods on Flower."""

__version__ = "0.1.0"
