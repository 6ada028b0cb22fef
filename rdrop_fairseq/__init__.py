"""R-Drop for fairseq: pass this folder to ``--user-dir`` to register the criteria.

The loss functions in :mod:`rdrop_fairseq.loss` need only PyTorch; the fairseq
criteria are registered when fairseq is importable.
"""

import importlib.util
import warnings

__version__ = "0.1.0"

if importlib.util.find_spec("fairseq") is not None:
    try:
        import fairseq  # noqa: F401
    except Exception as error:
        # A user of the plain-PyTorch loss may have a broken fairseq around;
        # it must not take the loss down with it.
        warnings.warn(
            f"rdrop_fairseq: fairseq is installed but does not import ({type(error).__name__}: {error}), "
            "so the R-Drop criteria are not registered; rdrop_fairseq.loss works without them. "
            "Repair the fairseq install, or uninstall it, to use the criteria or silence this warning.",
            stacklevel=2,
        )
    else:
        from rdrop_fairseq import criterions  # noqa: F401  (registers the criteria)
        from rdrop_fairseq import fairseq_fixes
        from rdrop_fairseq.checkpoint_types import allow_fairseq_checkpoint_types

        fairseq_fixes.apply()
        allow_fairseq_checkpoint_types()
