"""What the tests share: fairseq command runs, tiny models, float64 references, two-rank launches."""
