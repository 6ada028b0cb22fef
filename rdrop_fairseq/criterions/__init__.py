from rdrop_fairseq.criterions import adaptive_loss_rdrop  # noqa: F401
from rdrop_fairseq.criterions import label_smoothed_cross_entropy_rdrop  # noqa: F401
from rdrop_fairseq.criterions import sentence_prediction_rdrop  # noqa: F401
