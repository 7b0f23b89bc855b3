"""Models: timm and torchvision classifiers by name with new heads, pretrained files, head/backbone.

:mod:`.create` builds a classifier (``create_model``) and reads its preprocessing config;
:mod:`.freeze` knows the head from the backbone (``model.kernel_head``) for freezing and LR groups;
:mod:`.segmentation` builds segmentation models; :mod:`.ensemble` averages trained models (k-fold).
To add a model family, build it in a ``create_*`` function that sets ``model.kernel_head`` and
dispatch to it from :func:`create_model` by name prefix (as ``tv:`` does for torchvision).
"""
from .create import adapt_first_conv, create_model, list_models, model_summary, read_weights, resolve_data_config
from .ensemble import FoldEnsemble, mean_probabilities, probabilities_to_logits
from .freeze import backbone_parameters, head_modules, head_parameters, set_backbone_frozen, train_mode

__all__ = ["create_model", "list_models", "read_weights", "adapt_first_conv", "resolve_data_config", "model_summary",
           "head_modules", "head_parameters", "backbone_parameters", "set_backbone_frozen",
           "train_mode", "FoldEnsemble", "mean_probabilities", "probabilities_to_logits"]
