"""Images/s of `edgel2 infer --ray` against plain `edgel2 infer` on the same files: what the
Ray engine costs (or gives) on one machine. Prints a table; rounds are interleaved and medians
quoted, since a shared machine's speed drifts.

Each round runs, as a user would, one command per row in a fresh process:
  infer            edgel2 infer FOLDER --out-format json --out X
  ray A x C        edgel2 infer --ray FOLDER --out X [--actors A --cpus-per-actor C]
and reads two figures: the wall time of the whole command (Python and Ray start-up, model
loads, listing, writing) and the images/s line the command prints itself (from its first
image read to its last result written; for Ray, after Ray has started). Each Ray layout also
runs on the first SMALL files, to split its own time into a fixed cost (actor start-up: a
process, imports, the model compiled) and a per-image rate:
steady img/s = (N - SMALL) / (own seconds on N - own seconds on SMALL).

    python scripts/bench/bench_ray.py --images .data/cifar10-jpeg/test --rounds 3
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATE = re.compile(r"edgel2: (\d+) images in ([\d.]+) s \(([\d.]+) img/s\)")


SMALL = 128


def run(args: list[str]) -> tuple[float, float, int]:
    """(wall seconds, the command's own img/s, images) of one `edgel2 infer` run."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgel2", "infer", *args], capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    match = RATE.search(done.stderr)
    if done.returncode not in (0, 3) or not match:
        sys.exit(f"bench_ray: edgel2 infer {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return wall, float(match.group(3)), int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=".data/cifar10-jpeg/test",
                        help="folder of images (default: the 10,000 CIFAR-10-JPEG test files)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray", default="2x1,1x2",
                        help="Ray layouts to try, ACTORSxCPUS each (default: 2x1,1x2)")
    args = parser.parse_args()
    layouts = [tuple(map(int, layout.split("x"))) for layout in args.ray.split(",")]
    rows: dict[str, list[tuple[float, float]]] = {}
    fixed: dict[str, list[float]] = {}
    images = 0
    with tempfile.TemporaryDirectory() as scratch:
        small = Path(scratch) / "small"
        small.mkdir()
        for i, path in enumerate(sorted(Path(args.images).rglob("*.jpg"))[:SMALL]):
            (small / f"{i:04d}.jpg").symlink_to(path.resolve())
        for round_ in range(args.rounds):
            commands = {"infer": [args.images, "--out-format", "json", "--out",
                                  f"{scratch}/infer-{round_}.json"]}
            for actors, cpus in layouts:
                commands[f"ray {actors} x {cpus}"] = [
                    "--ray", args.images, "--out", f"{scratch}/ray-{actors}x{cpus}-{round_}",
                    "--actors", str(actors), "--cpus-per-actor", str(cpus)]
            for name, command in commands.items():
                wall, rate, images = run(command)
                rows.setdefault(name, []).append((wall, rate))
                print(f"round {round_ + 1}: {name}: {wall:.1f} s wall, {rate:.0f} img/s",
                      file=sys.stderr)
                if name.startswith("ray"):
                    tiny = command[:1] + [str(small), "--out", f"{command[3]}-small"] + command[4:]
                    _, small_rate, small_images = run(tiny)
                    fixed.setdefault(name, []).append(small_images / small_rate)
    base_wall = statistics.median(w for w, _ in rows["infer"])
    base_rate = statistics.median(r for _, r in rows["infer"])
    print(f"\n{images:,} images, median of {args.rounds} interleaved rounds\n")
    print("| command | wall s | wall img/s | vs infer | own img/s | vs infer | fixed s | "
          "steady img/s | vs infer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in rows.items():
        wall = statistics.median(w for w, _ in runs)
        rate = statistics.median(r for _, r in runs)
        cells = ["", "", ""]
        if name in fixed:
            start = statistics.median(fixed[name])
            steady = (images - SMALL) / (images / rate - start)
            cells = [f"{start:.1f}", f"{steady:.0f}", f"{steady / base_rate:.2f}x"]
        print(f"| {name} | {wall:.1f} | {images / wall:.0f} | {base_wall / wall:.2f}x | "
              f"{rate:.0f} | {rate / base_rate:.2f}x | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
