import torch
from compactkv.bench.kernels import decode_step
for kind in ("turbo4", "turbo2", "turbo3"):
    for b, t in ((1, 5000), (3, 777), (2, 40000)):
        step, _ = decode_step(kind, b, t, torch.device("cuda"), gluon=True)
        step(); torch.cuda.synchronize()
        print(kind, b, t, "ok", flush=True)
