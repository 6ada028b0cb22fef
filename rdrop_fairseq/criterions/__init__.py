from rdrop_fairseq.criterions import label_smoothed_cross_entropy_rdrop  # noqa: F401
