"""Networks: DnCNN (the seed's residual CNN) and U-Net for denoising; F2Fd's dropout U-Net
(3-D and 2-D) and a cryoCARE-like 3-D U-Net for even/odd tomograms; Topaz-Denoise's
networks (to run its pretrained weights); Siamese for clustering."""

from .dncnn import DnCNN
from .siamese import Siamese
from .topaz import TopazFCNN, TopazUNet
from .unet import UNet
from .unet3d import F2FdUNet, UNet3d

ARCHITECTURES = {"dncnn": DnCNN, "unet": UNet, "siamese": Siamese, "topaz-unet": TopazUNet,
                 "topaz-fcnn": TopazFCNN, "f2fd-unet": F2FdUNet,
                 "unet3d": UNet3d}


def build_model(config):
    """Rebuild a model from its ``config()`` dict, e.g. {"arch": "dncnn", "depth": 12}.

    Raises
    ------
    ValueError
        For an unknown architecture.
    """
    config = dict(config)
    arch = config.pop("arch")
    if arch not in ARCHITECTURES:
        raise ValueError("unknown architecture %r (known: %s)" % (arch, ", ".join(ARCHITECTURES)))
    return ARCHITECTURES[arch](**config)
