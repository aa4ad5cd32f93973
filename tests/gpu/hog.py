"""Hold GPU memory with plain torch allocations, as another user's process would.

    python hog.py DEVICE_INDEX LEAVE_MIB

Allocates all but LEAVE_MIB of the device's free memory (cudaMalloc through torch, never
managed memory), prints what it holds, then sleeps until killed. The runbook's case of a
GPU "with large persistent memory occupancy" that makes dual-device start-up fail.
"""

from __future__ import annotations

import os
import sys
import time

import torch

MIB = 1 << 20
device, leave = int(sys.argv[1]), int(sys.argv[2]) * MIB
torch.cuda.set_device(device)
torch.empty(1, device=device)
free, total = torch.cuda.mem_get_info(device)
want, held = free - leave, []
while want > 64 * MIB:
    try:
        held.append(torch.empty(want, dtype=torch.uint8, device=device))
        break
    except torch.OutOfMemoryError:
        want -= 64 * MIB
after, _ = torch.cuda.mem_get_info(device)
print(
    f"HOG pid={os.getpid()} dev={device} held={want // MIB}MiB free_after={after // MIB}MiB total={total // MIB}MiB",
    flush=True,
)
while True:
    time.sleep(60)
