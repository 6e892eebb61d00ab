"""Transport overhead of the engine process: 1M points out, a 2M-triangle mesh back, through the real pipes.

    .venv/bin/python bench/transport.py [--points 1000000] [--faces 2000000] [--repeat 5]

The engine is started once (warm) and answers through the benchmark hook
``_benchmark_echo_faces`` (engine/service/protocol.py): it decodes the request but
skips the solve and sends back a synthetic mesh of that many faces (cached in
the engine, so it costs no time), so the figures are encoding, pipe, decoding
and the client's polling alone.  Each row is the median and best of
``--repeat`` round trips, and the median as a fraction of a representative
reconstruction (``--reference-seconds``: the fastest 1M-point run in
bench/RESULTS.md, bunny n0.5 on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.service.client import EngineClient  # noqa: E402

REFERENCE_SECONDS = 15.2


def cloud(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the extension sends: float32 positions and normals, float32 RGBA colours (Blender's colour attribute)."""
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(n, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return normals.copy(), normals, rng.uniform(size=(n, 4)).astype(np.float32)


def round_trips(client: EngineClient, arrays: tuple[np.ndarray, ...], faces: int, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = client.reconstruct(*arrays, _benchmark_echo_faces=faces, timeout=120)
        times.append(time.perf_counter() - t)
        assert result.faces.shape == (faces, 3)
    return times


def megabytes(arrays: tuple[np.ndarray, ...] | list[np.ndarray]) -> float:
    return sum(a.nbytes for a in arrays) / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--faces", type=int, default=2_000_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--reference-seconds", type=float, default=REFERENCE_SECONDS)
    a = p.parse_args()

    big, tiny = cloud(a.points), cloud(5)
    vertices = a.faces // 2 + 2
    back = [np.empty((vertices, 3), np.float32), np.empty((a.faces, 3), np.int32),
            np.empty((vertices, 4), np.float32), np.empty((vertices, 3), np.float32)]
    client = EngineClient(sys.executable)
    try:
        t = time.perf_counter()
        hello = client.start()
        started = time.perf_counter() - t
        round_trips(client, big, a.faces, 1)  # warm: the engine's synthetic mesh is cached, pages are touched
        rows = [("request only", megabytes(big), 0.0, round_trips(client, big, 0, a.repeat)),
                ("result only", megabytes(tiny), megabytes(back), round_trips(client, tiny, a.faces, a.repeat)),
                ("both", megabytes(big), megabytes(back), round_trips(client, big, a.faces, a.repeat))]
    finally:
        client.close()
    print(f"engine {hello['engine_version']}, python {hello['python']}, torch {hello['torch_version']}; "
          f"{a.points} points out (f4 xyz, f4 normals, f4 RGBA), {a.faces} faces back (f4 xyz, i4 faces, "
          f"f4 RGBA, f4 normals); warm, {a.repeat} round trips each; engine start {started:.2f} s")
    print(f"{'case':<14}{'MB out':>8}{'MB back':>9}{'median s':>10}{'best s':>8}{'of recon':>10}")
    for name, out_mb, back_mb, times in rows:
        med = statistics.median(times)
        print(f"{name:<14}{out_mb:>8.1f}{back_mb:>9.1f}{med:>10.3f}{min(times):>8.3f}"
              f"{med / a.reference_seconds:>9.2%}")
    print(f"(of recon: median / {a.reference_seconds:g} s, the fastest 1M-point reconstruction in bench/RESULTS.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
