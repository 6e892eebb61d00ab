"""From a fitted field to a mesh: marching cubes and its table, trimming far from the data, vertex colours."""
