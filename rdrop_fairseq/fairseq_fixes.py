"""Repairs to the installed fairseq that R-Drop users would otherwise hit, each
applied only where that fairseq has the defect (found by feature, not version).

:func:`apply` runs when the plugin is loaded (``--user-dir`` or ``import
rdrop_fairseq``) and is idempotent.
"""

import functools

from fairseq.modules import transformer_layer

_APPLIED = "_rdrop_fairseq_repair"
# fairseq 0.12.2's fused copies of an encoder layer's weights, read only by
# its inference fast path (torch._transformer_encoder_layer_fwd)
FAST_PATH_COPIES = (
    "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
    "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias",
)


def take_encoder_layers_off_the_fast_path() -> bool:
    """fairseq 0.12.2's encoder layers have an inference fast path with two defects:

    - a layer loaded from a checkpoint takes it in evaluation, passing the
      padding mask without a mask type, which torch >= 1.13 refuses
      (``RuntimeError: Mask Type should be defined``): fairseq-generate,
      -validate and -eval-lm crash on every post-norm encoder checkpoint;
    - its fused weight copies are parameters that never get a gradient, so
      PyTorch DDP (``--ddp-backend pytorch_ddp`` without
      ``--find-unused-parameters``) stops at the second update.

    Layers then load onto the path they train on, and the copies are frozen,
    as in later fairseq, which has neither. Returns whether this fairseq needed it.
    """
    layer = transformer_layer.TransformerEncoderLayerBase
    load, init = layer.__dict__.get("_load_from_state_dict"), layer.__init__
    if load is None or "load_to_BT" not in load.__code__.co_names:
        return False
    if getattr(load, _APPLIED, False):
        return True

    @functools.wraps(init)
    def init_with_frozen_copies(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for name in FAST_PATH_COPIES:
            if name in self._parameters:
                self._parameters[name].requires_grad_(False)

    @functools.wraps(load)
    def load_without_the_fast_path(self, *args, **kwargs):
        load(self, *args, **kwargs)
        # the flag the fast path checks, in the layer and in the encoder
        self.load_to_BT = False

    setattr(load_without_the_fast_path, _APPLIED, True)
    layer.__init__ = init_with_frozen_copies
    layer._load_from_state_dict = load_without_the_fast_path
    return True


def apply() -> None:
    take_encoder_layers_off_the_fast_path()
