"""The student network (model.py) and its weights in a student run folder (io.py).

`construct distill` trains it; refine, slide and the Python API run it through
construct.inference.factory, without importing the distill phase.
"""
