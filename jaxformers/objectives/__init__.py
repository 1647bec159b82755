"""Example building, numpy in / numpy out, faithful to the originals: google-research/bert's
masked LM + next-sentence instances (``mlm_nsp``) and T5's span corruption (``span_corruption``).
"""
