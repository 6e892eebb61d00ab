"""The learned kernel prior (issue 16): a small network that weighs the fit's smoothness region by region.

:mod:`.features` summarises the points around each occupied cell; :mod:`.model` holds the network, loads its
weights (``prior.pt`` beside it, trained by ``bench/train_prior.py``, described in ``MODEL_CARD.md``) and turns
its output into one smoothness factor per voxel of every level, which :func:`engine.solver.system.assemble`
applies to the second-difference term centred on that voxel.
"""
