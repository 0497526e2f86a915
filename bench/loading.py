"""Loading a real-size checkpoint from disk: time and peak memory, with and without accelerate.

    python bench/loading.py [--model random-sd15] [--repeat 2]

diffusers initialises a model's weights empty and fills them from the file when `accelerate` is
installed (low_cpu_mem_usage), and otherwise initialises them at random first and then
overwrites them: slower, and twice the peak memory. A worker that switches among checkpoints
pays this on every switch. Each load runs in a fresh process (peak RSS from VmHWM), in float32,
`--repeat` times each way; the first run builds the model into the farm cache if needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

LOAD = """
import json, sys, time
from farm import libraries, tiny
libraries.quiet()
import diffusers, torch
folder = tiny.ensure(sys.argv[1])
started = time.perf_counter()
pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
    folder, torch_dtype=torch.float32, use_safetensors=True, local_files_only=True,
    low_cpu_mem_usage=sys.argv[2] == "1")
seconds = time.perf_counter() - started
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-sd15")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-c", "from farm import tiny; import sys; "
                    "tiny.ensure(sys.argv[1])", args.model], check=True)  # built once
    print(f"{args.model}, float32, from the farm cache, median of {args.repeat} fresh processes")
    for label, flag in (("with accelerate (low_cpu_mem_usage)", "1"),
                        ("without (random init, then overwrite)", "0")):
        runs = [json.loads(subprocess.run([sys.executable, "-c", LOAD, args.model, flag],
                                          check=True, capture_output=True, text=True)
                           .stdout.strip().splitlines()[-1]) for _ in range(args.repeat)]
        print(f"  {label:40s} {statistics.median(r['seconds'] for r in runs):6.1f} s, peak "
              f"{statistics.median(r['peak_mib'] for r in runs):6.0f} MiB")


if __name__ == "__main__":
    main()
