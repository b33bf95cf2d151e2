"""Stage 2, `construct distill`: a fast student segmentation network trained on a stage-1 run's pseudo-masks.

Teacher targets (the run's refine path over the train split, kept in a score store) → an smp student
trained with soft-score MSE, boundary-weighted cross-entropy and uncertainty weighting → a student run that
`construct refine` runs without CONCH.
"""
