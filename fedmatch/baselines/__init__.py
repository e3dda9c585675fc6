"""The comparison baselines of FedLGD / FedKA as plain PyTorch math.

One module per method, each citing the equations it implements:

- ``scaffold``: SCAFFOLD (Karimireddy et al., ICML 2020), control variates, option II;
- ``fednova``: FedNova (Wang et al., NeurIPS 2020), normalised averaging;
- ``feddyn``: FedDyn (Acar et al., ICLR 2021), dynamic regularisation;
- ``moon``: MOON (Li, He & Song, CVPR 2021), model-contrastive loss;
- ``vhl``: VHL (Tang et al., ICML 2022), virtual data from an untrained generator and
  class-conditional feature alignment.

The strategies (``strategies/``) and the client workload (``clients/baselines.py``)
only move tensors between these functions and the wire.

Import from the submodules (``fedmatch.baselines.<module>``): this package imports nothing
itself, so that two threads importing different submodules (Flower loads the ServerApp
and the ClientApp concurrently) can never deadlock on a package import cycle.
"""
