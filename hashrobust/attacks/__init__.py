"""Adversarial attacks on any image classifier, dense or hashed: FGSM, BIM, PGD, JSMA, C&W-L2, DeepFool, Square,
APGD / APGD-T, and EOT for randomised models.

Paper: Liu et al. (ASP-DAC 2018), abstract (attacks extended to compressed models); the authors' code attacks
with FGSM, BIM and JSMA in cleverhans v2 conventions (docs/protocol.md §4): pixels in [0, 1], and the labels
default to the model's own clean prediction (no label leaking). A hashed
model computes exactly the function of the dense model with weights V, so an
attack simply backpropagates through it; this package never looks inside a
model (no file of it imports a hashrobust layer) and works on any `nn.Module`.

Sources, in paper order, one file each (`base.py` holds the `Attack` base class, the checks and the losses):
    FGSM      Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    BIM       Kurakin, Goodfellow, Bengio, "Adversarial Examples in the Physical World", arXiv:1607.02533, 2016.
    PGD       Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018;
              its `step`/`project` split follows MadryLab/robustness (attack_steps.py).
    JSMA      Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", EuroS&P 2016;
              batched like cleverhans v2 (attacks_tf.jsma_symbolic).
    CW        Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
    DeepFool  Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool", CVPR 2016.
    Square    Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a Query-Efficient Black-Box
              Adversarial Attack via Random Search", ECCV 2020; score-based, no gradient at all.
    APGD      Croce, Hein, "Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse
              Parameter-free Attacks", ICML 2020: APGD (CE or DLR loss) and APGD-T (targeted DLR).
    EOT       Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018:
              a model wrapper averaging a randomised model's logits over draws.
The "margin" loss of FGSM/BIM/PGD is C&W's logit margin: it keeps its
gradient where a saturated float32 softmax gives cross-entropy an exactly
zero one, which is how "gradient inhibition" masks gradients (notebook 05;
Carlini & Wagner 2016; Athalye, Carlini, Wagner 2018); so does APGD's DLR loss,
a ratio of logit differences that no scaling of the logits changes. Square needs only the
model's scores, so no gradient masking can stop it. tests/test_attacks.py
checks FGSM and PGD against torchattacks to float precision; tests/test_square.py and
tests/test_apgd.py check Square and APGD against torchattacks' success rates. Every
gradient attack ascends the SUM of per-example losses and draws its randomness per
example (base.py), so an adversarial image never depends on the rest of its batch.

Shapes: N batch, C/H/W image, D = C*H*W features, K classes.
"""
from __future__ import annotations

from .base import (Attack, ce_loss, changed_fraction, example_keys, example_normal, example_uniform, logit_margin,
                   loss_gradient, margin_loss)
from .fgsm import FGSM
from .bim import BIM
from .pgd import PGD
from .jsma import JSMA
from .cw import CW
from .deepfool import DeepFool
from .square import Square
from .apgd import APGD, APGDT
from .eot import EOT

__all__ = ["Attack", "FGSM", "BIM", "PGD", "JSMA", "CW", "DeepFool", "Square", "APGD", "APGDT", "EOT",
           "ce_loss", "margin_loss", "logit_margin", "loss_gradient", "changed_fraction",
           "example_keys", "example_uniform", "example_normal"]
