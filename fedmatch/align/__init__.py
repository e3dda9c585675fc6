"""Feature alignment math (FedKA): MK-MMD, federated voting, gradient reversal, schedules.

Plain PyTorch, device-agnostic and free of Flower, so it is unit-tested on its own.

Import from the submodules (``fedmatch.align.<module>``): this package imports nothing
itself, so that two threads importing different submodules (Flower loads the ServerApp
and the ClientApp concurrently) can never deadlock on a package import cycle.
"""
