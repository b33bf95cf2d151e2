"""The one inference pipeline: tile source → predictor → (gate, CRF) → sink.

refine, distill's teacher targets and slide are arrangements of these parts (docs/design.md section 5).
"""
