"""The LightningModule and what it owns: optimizer groups and schedule (``optim.py``), gradient
caching (``gradcache.py``), starting from another run's weights (``init_from.py``), FSDP2 sharding
(``sharding.py``) and the hyper-parameter record (``hparams.py``)."""
from siglip_lightning.model.module import SigLIPModule

__all__ = ["SigLIPModule"]
