"""Model zoo: the DC/DM ConvNet, a small-image ResNet-18 and FedKA's digit CNN, built by name.

Import from the submodules (``fedmatch.models.<module>``): this package imports nothing
itself, so that two threads importing different submodules (Flower loads the ServerApp
and the ClientApp concurrently) can never deadlock on a package import cycle.
"""
