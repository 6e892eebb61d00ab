"""Large scenes: overlapping chunks solved apart, the executors and worker processes that run them, the memory plan.

The memory guard plans the chunk grid and the executors run the chunk tasks, so a
change of the chunking touches these modules together.
"""
