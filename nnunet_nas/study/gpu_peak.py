"""``python -m nnunet_nas.study.gpu_peak PEAK_FILE nnUNetv2_train ARGS...``: run an nnU-Net console command in this
process, unchanged, and at its exit write the CUDA memory it peaked at (``torch.cuda.max_memory_allocated`` of
every visible device, MiB) to ``PEAK_FILE`` as JSON. How ``nnunet-nas run`` measures a training's GPU memory without
changing the trainer. Under ``-num_gpus`` nnU-Net trains in spawned processes, which this does not see (nothing is
written then)."""

import atexit
import json
import os
import sys
from importlib.metadata import entry_points


def record_peak(path: str) -> None:
    import torch
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    peaks = [torch.cuda.max_memory_allocated(i) / 2 ** 20 for i in range(torch.cuda.device_count())]
    if not any(peaks):
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"peak_gpu_mib": round(max(peaks), 1), "per_device_mib": [round(p, 1) for p in peaks],
                   "device": torch.cuda.get_device_name(0)}, f)
    os.replace(tmp, path)


def main() -> None:
    path, name, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    found = [e for e in entry_points(group="console_scripts") if e.name == name]
    if not found:
        sys.exit(f"gpu_peak: no console command {name!r} is installed")
    atexit.register(record_peak, path)
    sys.argv = [name, *args]
    sys.exit(found[0].load()())


if __name__ == "__main__":
    main()
