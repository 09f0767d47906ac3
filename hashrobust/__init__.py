"""hashrobust: HashedNets compression, adversarial attacks and gradient inhibition, for teaching.

Reproduces and examines Liu, Liu, Liu, Wang, Jin, Wen, "Security Analysis and
Enhancement of Model Compressed Deep Learning Systems under Adversarial
Attacks" (ASP-DAC 2018, arXiv:1802.05193), on top of HashedNets (Chen et al.,
ICML 2015). Importing this package touches no GPU, network or disk.

    import hashrobust as hr
    model = hr.load_pretrained("mnist", "mlp3", ratio=8)
    test = hr.load_dataset("mnist", "test")
    hr.evaluate(model, test.subset(1000))
    hr.success_rate(model, hr.FGSM(model, eps=0.3), test.images[:1000], test.labels[:1000])
"""
from .adversarial_training import AdversarialRecipe
from .attacks import APGD, APGDT, BIM, CW, EOT, FGSM, JSMA, PGD, Attack, DeepFool, Square
from .data import CIFAR10_CLASSES, ImageDataset, data_root, load_dataset
from .hashing import hash_positions, num_buckets
from .defenses import GradientMaskingWarning, choose_strength, gradient_inhibition, inhibition_report
from .evaluation import (attack_outcomes, jsma_success, paired_difference, robust_accuracy, success_rate, sweep,
                         transfer, wilson_interval)
from .layers import HashedConv2d, HashedLinear, compress, count_parameters, decompress
from .models import ARCHS, Normalize, build_model
from .train import TrainRecipe, default_device, evaluate, predict, set_seed, train
from .zoo import load_checkpoint, load_pretrained, read_manifest, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    # hashing and layers (HashedNets)
    "hash_positions", "num_buckets", "HashedLinear", "HashedConv2d", "compress", "decompress", "count_parameters",
    # models, data, training
    "ARCHS", "Normalize", "build_model", "load_dataset", "ImageDataset", "data_root", "CIFAR10_CLASSES",
    "TrainRecipe", "train", "evaluate", "predict", "set_seed", "default_device",
    # the pretrained zoo
    "load_pretrained", "load_checkpoint", "read_manifest", "save_checkpoint",
    # attacks and their evaluation
    "Attack", "FGSM", "BIM", "PGD", "JSMA", "CW", "DeepFool", "Square", "APGD", "APGDT", "EOT",
    # evaluation: the paper's success rate, standard robust accuracy, the ensemble, intervals
    "success_rate", "robust_accuracy", "attack_outcomes", "jsma_success", "transfer", "sweep",
    "wilson_interval", "paired_difference",
    # the defence and its diagnostics
    "gradient_inhibition", "inhibition_report", "choose_strength", "GradientMaskingWarning",
    # a defence that works: adversarial training (TrainRecipe(adversarial=AdversarialRecipe(...)))
    "AdversarialRecipe",
]
