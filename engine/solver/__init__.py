"""From points to a fitted implicit field: resolution, neighbours, normals, voxels, basis, levels, the solve.

Each stage feeds the next (voxel hierarchy -> basis -> linear system -> conjugate
gradients), so a change of the field's discretisation touches these modules together.
"""
