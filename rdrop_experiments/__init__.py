"""The plumbing of the demos, recipes, benchmark and GPU check.

Installed with the project but never loaded by ``--user-dir``: the plugin
(``rdrop_fairseq``) stays free of what this needs (tqdm, matplotlib,
sacrebleu, sentencepiece), and the demos' run tags hash the plugin's code,
not this package's.
"""
