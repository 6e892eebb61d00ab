import os

import torch

# CI runs on 2 cores; a fixed thread count keeps results and run time stable.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
