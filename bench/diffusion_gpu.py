"""SD1.5 txt2img on a GPU: our sampler and the whole mesh against diffusers' StableDiffusionPipeline.

Run (repository root, CUDA machine): `python bench/diffusion_gpu.py --out results.json`
CPU smoke test: `python bench/diffusion_gpu.py --tiny --device cpu --size 64 --steps 3 --runs 2`

Weights: a full-size SD1.5 single-file checkpoint (real LDM key layout, ~1.07 G random parameters, fp16)
is written to local disk on first use (`tiny_checkpoint --full`); both sides load the same file.
Phases (each skipped once --deadline seconds have passed, results are written after every phase):
  inproc   our text encode + KSampler + VAE decode + PNG in this process, eager (sampler it/s, latency)
  pipeline diffusers StableDiffusionPipeline built from the same modules (EulerDiscreteScheduler,
           guidance 8, PNG encoded with Pillow at compress level 4 like SaveImage)
  mesh     gateway + orchestrator + diffusion stage as processes; POST /v1/workflows -> SSE `completed`
           -> every output PNG fetched. Once with the fast path off (eager) and once on (compiled,
           CUDA graphs, warm-up manifest), then the diffusion stage is restarted and the first job timed
           with the persisted compile cache. Mesh overhead = latency - (text encodes + KSampler + VAE decode
           as the stage timed them, COMFYMESH_NODE_TIMINGS=1); PSNR of fast vs eager PNGs (same seed).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POSITIVE = "beautiful scenery nature glass bottle landscape, purple galaxy bottle,"
NEGATIVE = "text, watermark"
CKPT = "sd15_full.safetensors"
T0 = time.monotonic()
RESULTS: dict[str, Any] = {}


def elapsed() -> float:
    return time.monotonic() - T0


def say(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def workflow(size: int, steps: int, batch: int, seed: int = 42) -> dict[str, Any]:
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 8.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench", "images": ["8", 0]}},
    }


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def bucket_logs(lines: list[str]) -> list[dict[str, Any]]:
    """The fast path's log records among a mesh's log lines (bucket tiers built, failed, done; compile cache)."""
    found = []
    for line in lines:
        if "fast path bucket" in line or "staying eager" in line or "compile cache" in line:
            try:
                found.append(json.loads(line.split(": ", 1)[1]))
            except ValueError:
                found.append({"msg": line})
    return found


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------


def make_checkpoint(home: Path, args: argparse.Namespace) -> Path:
    from comfymesh.diffusion.models.tiny_checkpoint import make_tiny_checkpoint

    path = home / "models" / "checkpoints" / CKPT
    if not path.is_file():
        start = time.perf_counter()
        rng = "cuda" if args.device == "cuda" else "cpu"
        make_tiny_checkpoint(path, "sd15", seed=0, full=not args.tiny, device=rng)
        say(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")
    return path


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def inproc_and_pipeline(path: Path, args: argparse.Namespace) -> None:
    import torch

    from comfymesh.config.fast_path import FastPathSettings
    from comfymesh.diffusion.latents import vae_codec
    from comfymesh.diffusion.models.cache import ModelCache
    from comfymesh.diffusion.sampling import ksampler
    from comfymesh.diffusion.text.encode import encode_prompt
    from comfymesh.outputs import encode_png, frames_uint8

    device = torch.device(args.device)
    cache = ModelCache(device=device, fast=FastPathSettings(fast_path=False))
    start = time.perf_counter()
    ckpt = cache.get(path)
    say(f"in-process load {time.perf_counter() - start:.1f} s on {device}")
    model = cache.sampling_model(ckpt)
    encoders = cache.text_encoders(ckpt)

    def ours(batch: int, seed: int = 42) -> tuple[float, float, list[Any]]:
        start = time.perf_counter()
        with torch.no_grad():
            pos = encode_prompt(encoders, POSITIVE, None)
            neg = encode_prompt(encoders, NEGATIVE, None)
            latent = {"samples": torch.zeros(batch, 4, args.size // 8, args.size // 8)}
            t_sample = time.perf_counter()
            out = ksampler.sample_latent(model, seed=seed, steps=args.steps, cfg=8.0, sampler_name="euler",
                                         scheduler="normal", positive=[[pos[0], {"pooled_output": pos[1]}]],
                                         negative=[[neg[0], {"pooled_output": neg[1]}]], latent=latent)
            sample_s = time.perf_counter() - t_sample
            images = vae_codec.decode(ckpt.parts.vae, out["samples"])
        frames = frames_uint8(images)
        for f in frames:
            encode_png(f, compress_level=4)
        return time.perf_counter() - start, sample_s, frames

    res: dict[str, Any] = {}
    for batch in args.batches:
        ours(batch)
        runs = [ours(batch) for _ in range(args.runs)]
        res[f"ours_b{batch}"] = {"latency_ms": p50([r[0] for r in runs]) * 1000,
                                 "sampler_it_s": args.steps / p50([r[1] for r in runs])}
        say(f"ours b{batch}: {res[f'ours_b{batch}']}")
    frames = ours(1)[2]
    start = time.perf_counter()
    for _ in range(5):
        encode_png(frames[0], compress_level=4)
    res["png_encode_ms"] = (time.perf_counter() - start) / 5 * 1000
    RESULTS["inproc"] = res

    if args.skip_pipeline:
        return
    import copy

    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from comfymesh.diffusion.text.tokenizer import tokenizer_dir

    vae = ckpt.parts.vae
    if vae.dtype != ckpt.unet_dtype:  # the pipeline runs the VAE in the UNet's dtype
        vae = copy.deepcopy(vae).to(ckpt.unet_dtype)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", timestep_spacing="linspace")
    text_encoder = ckpt.parts.clips["l"]
    if text_encoder.dtype != ckpt.unet_dtype:  # the pipeline feeds the encoder's output to the UNet as is
        text_encoder = copy.deepcopy(text_encoder).to(ckpt.unet_dtype)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder,
                                   tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True),
                                   unet=ckpt.parts.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def theirs(batch: int, output: str = "pil") -> float:
        start = time.perf_counter()
        result = pipe(POSITIVE, negative_prompt=NEGATIVE, height=args.size, width=args.size,
                      num_inference_steps=args.steps, guidance_scale=8.0, num_images_per_prompt=batch,
                      generator=torch.Generator(device).manual_seed(42), output_type=output)
        if output == "pil":
            for image in result.images:
                png_bytes(image)
        else:
            sync(device)
        return time.perf_counter() - start

    for batch in args.batches:
        theirs(batch)
        lat = p50([theirs(batch) for _ in range(args.runs)])
        lat_latent = p50([theirs(batch, "latent") for _ in range(max(2, args.runs // 2))])
        res[f"pipeline_b{batch}"] = {"latency_ms": lat * 1000, "sampler_it_s_incl_text_encode": args.steps / lat_latent}
        say(f"pipeline b{batch}: {res[f'pipeline_b{batch}']}")


# ---------------------------------------------------------------------------------------------------


class HttpClient:
    """The bench's client: the standard library's http.client on a kept-alive connection per thread, as
    ComfyUI's own example scripts use (urllib). httpx spends ~3 ms more receiving an 800 KB PNG on
    loopback (its HTTP parsing is pure Python), which is the client's cost, not the mesh's."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        return conn

    def request(self, method: str, path: str, payload: Any = None) -> tuple[int, bytes]:
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile is reopened once
            conn = self._connection(fresh=attempt == 1)
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def events_until_finished(self, path: str) -> list[dict[str, Any]]:
        """A job's SSE stream read up to its final event, on its own connection: [{event, data}]."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("GET", path, headers={"Accept": "text/event-stream"})
            response = conn.getresponse()
            assert response.status == 200, response.status
            events: list[dict[str, Any]] = []
            current: dict[str, Any] = {}
            while line := response.readline():
                text = line.decode().rstrip("\r\n")
                if text.startswith("event:"):
                    current["event"] = text[6:].strip()
                elif text.startswith("data:"):
                    current["data"] = json.loads(text[5:])
                elif not text and "event" in current:
                    events.append(current)
                    if current["event"] in ("completed", "failed", "cancelled"):
                        break
                    current = {}
            return events
        finally:
            conn.close()


class MeshRun:
    def __init__(self, base: Path, label: str, args: argparse.Namespace, env: dict[str, str]) -> None:
        from tests.mesh import Mesh

        # a fresh data root per mesh (the same checkpoint file, hard-linked): no result cache carries over
        home = base / f"mesh-{label}"
        ckpt = home / "models" / "checkpoints" / CKPT
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if not ckpt.exists():
            try:
                os.link(base / "models" / "checkpoints" / CKPT, ckpt)
            except OSError:
                ckpt.symlink_to(base / "models" / "checkpoints" / CKPT)
        self.home = home
        self.args = args
        self.mesh = Mesh(home, stages=("diffusion",), imaging_replicas=0,
                         env={"COMFYMESH_NODE_TIMINGS": "1", "COMFYMESH_DEVICE": args.device,
                              **({"COMFYMESH_TRACE": "1"} if args.trace else {}), **env})
        self.client = HttpClient(self.mesh.port)

    def start(self) -> None:
        start = time.perf_counter()
        try:
            self.mesh.start()
        except Exception:
            print("\n".join(self.mesh.logs[-30:]), flush=True)
            raise
        say(f"mesh up in {time.perf_counter() - start:.1f} s")

    def node_timings(self, job_id: str) -> list[dict[str, Any]]:
        """The stage's `node timing` log lines of a job: [{class_type, start (wall s), ms}] in order."""
        out = []
        for line in list(self.mesh.logs):
            if '"node timing"' not in line or job_id not in line:
                continue
            entry = json.loads(line.split(": ", 1)[1])
            if entry.get("job") == job_id:
                out.append(entry)
        return sorted(out, key=lambda e: float(e["start"]))

    def job(self, batch: int, seed: int = 42) -> dict[str, Any]:
        """POST -> SSE `completed` (which lists the images) -> every PNG fetched from /view."""
        wall0, start = time.time(), time.perf_counter()
        status, reply = self.client.request("POST", "/v1/workflows",
                                            {"prompt": workflow(self.args.size, self.args.steps, batch, seed)})
        assert status == 202, reply
        job_id = json.loads(reply)["job_id"]
        posted = time.perf_counter()
        events = self.client.events_until_finished(f"/v1/jobs/{job_id}/events")
        seen = time.perf_counter()
        assert events[-1]["event"] == "completed", events[-1]
        pngs = [self.client.request("GET", image["url"])[1] for image in events[-1]["data"]["images"]]
        total_ms = (time.perf_counter() - start) * 1000
        assert len(pngs) == batch and all(p[:4] == b"\x89PNG" for p in pngs)
        client_marks = [("client.post", wall0), ("client.posted", wall0 + posted - start),
                        ("client.completed_seen", wall0 + seen - start), ("client.fetched", wall0 + total_ms / 1000)]
        time.sleep(0.05)  # the stage's timing log lines travel through the supervisor's pipe
        timings = self.node_timings(job_id)
        nodes: dict[str, float] = {}
        for entry in timings:
            nodes[entry["class_type"]] = nodes.get(entry["class_type"], 0.0) + float(entry["ms"])
        compute = sum(nodes.get(k, 0.0) for k in ("CLIPTextEncode", "KSampler", "VAEDecode"))
        # where the rest goes: before the first node, between nodes, after the last, and the fetches
        phases: dict[str, float] = {"post": (posted - start) * 1000}
        if timings:
            phases["post_to_first_node"] = (float(timings[0]["start"]) - wall0) * 1000 - phases["post"]
            ends = [float(e["start"]) + float(e["ms"]) / 1000 for e in timings]
            phases["between_nodes"] = sum(max(0.0, float(b["start"]) - a) * 1000 for a, b in zip(ends[:-1], timings[1:], strict=True))
            phases["last_node_end_to_completed_seen"] = (wall0 + (seen - start) - ends[-1]) * 1000
            phases["save_image"] = nodes.get("SaveImage", 0.0)
        phases["fetch_pngs"] = total_ms - (seen - start) * 1000
        return {"job": job_id, "ms": total_ms, "nodes": nodes, "compute_ms": compute,
                "overhead_ms": total_ms - compute, "phases": phases, "pngs": pngs,
                "trace": self.trace_marks(client_marks) if self.args.trace else {}}

    def trace_marks(self, client_marks: list[tuple[str, float]]) -> dict[str, float]:
        """ms after the POST at which each traced point was reached (COMFYMESH_TRACE marks of every
        service between this job's POST and its last fetch; jobs run one at a time here)."""
        begin, end = client_marks[0][1], client_marks[-1][1] + 0.0005
        marks = list(client_marks)
        for line in list(self.mesh.logs):
            if '{"trace": ' in line:
                mark = json.loads(line[line.index("{"):])
                if begin <= mark["t"] <= end:
                    marks.append((mark["trace"], mark["t"]))
        seen: dict[str, int] = {}
        out: dict[str, float] = {}
        for point, t in sorted(marks, key=lambda m: m[1]):
            seen[point] = seen.get(point, 0) + 1
            out[point if seen[point] == 1 else f"{point}#{seen[point]}"] = (t - begin) * 1000
        return out

    def measure(self, label: str, png_ms: float) -> dict[str, Any]:
        res: dict[str, Any] = {}
        for batch in self.args.batches:
            first = self.job(batch, seed=100 * batch)
            runs = [self.job(batch, seed=100 * batch + 1 + i) for i in range(self.args.runs)]
            ks = p50([r["nodes"].get("KSampler", float("nan")) for r in runs])
            res[f"b{batch}"] = {
                "first_ms": first["ms"], "latency_ms": p50([r["ms"] for r in runs]),
                "latency_min_ms": min(r["ms"] for r in runs),
                "ksampler_ms": ks, "sampler_it_s": self.args.steps / (ks / 1000),
                "overhead_ms": p50([r["overhead_ms"] for r in runs]),
                "overhead_ex_png_ms": p50([r["overhead_ms"] for r in runs]) - batch * png_ms,
                "overhead_phases_ms": {k: round(p50([r["phases"].get(k, 0.0) for r in runs]), 2)
                                       for k in runs[0]["phases"]},
                "nodes_ms": {k: p50([r["nodes"].get(k, 0.0) for r in runs]) for k in runs[0]["nodes"]},
            }
            if self.args.trace:  # each point's median time after the POST, in order
                points = {point for r in runs for point in r["trace"]}
                res[f"b{batch}"]["trace_ms"] = dict(sorted(
                    ((point, round(p50([r["trace"][point] for r in runs if point in r["trace"]]), 2)) for point in points),
                    key=lambda item: item[1]))
            res[f"b{batch}_png0"] = runs[-1]["pngs"][0]
            say(f"{label} b{batch}: " + json.dumps({k: v for k, v in res[f'b{batch}'].items()}, default=str))
        return res

    def concurrent(self, n: int) -> dict[str, Any]:
        start = time.perf_counter()
        results: list[dict[str, Any]] = []
        errors: list[str] = []

        def one(i: int) -> None:
            try:
                results.append(self.job(1, seed=1000 + i))
            except Exception as exc:  # counted, not fatal
                errors.append(repr(exc)[:300])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        out = {"jobs": n, "completed": len(results), "errors": errors[:3], "wall_s": wall, "images_per_min": len(results) * 60 / wall,
               "latency_p50_ms": p50([r["ms"] for r in results])}
        say(f"{n} concurrent: {out}")
        return out

    def fast_logs(self, after: int = 0) -> list[dict[str, Any]]:
        return bucket_logs(self.mesh.logs[after:])

    def wait_buckets(self, count: int, after: int, timeout: float) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            done = [e for e in self.fast_logs(after) if " done: tier " in e.get("msg", "")]
            if len(done) >= count:
                break
            time.sleep(0.5)
        return time.perf_counter() - start

    def stop(self) -> None:
        self.mesh.stop()
        if self.args.out:  # every service's log lines, for reading the run afterwards
            Path(self.args.out).with_name(f"{self.home.name}.log").write_text("\n".join(self.mesh.logs))


def strip_pngs(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if not k.endswith("_png0")}


def mesh_phases(home: Path, args: argparse.Namespace) -> None:
    from PIL import Image

    png_ms = RESULTS.get("inproc", {}).get("png_encode_ms", 0.0)
    eager_png: dict[str, bytes] = {}
    if "eager" in args.mesh:
        run = MeshRun(home, "eager", args, {"COMFYMESH_FAST_PATH": "0"})
        run.start()
        try:
            res = run.measure("mesh_eager", png_ms)
            eager_png = {k: v for k, v in res.items() if k.endswith("_png0")}
            if args.concurrent and args.concurrent_eager:
                res["concurrent"] = run.concurrent(args.concurrent)
            RESULTS["mesh_eager"] = strip_pngs(res)
        finally:
            run.stop()
        write(args)
    if "fast" in args.mesh and elapsed() < args.deadline:
        manifest = home / "warmup.json"
        entries: list[dict[str, Any]] = [{"ckpt": CKPT, "width": args.size, "height": args.size, "batch": b,
                                          "compile": args.compile_batches is None or b in args.compile_batches}
                                         for b in args.batches]
        env = {"COMFYMESH_FAST_PATH": "1", "COMFYMESH_WARMUP_MANIFEST": str(manifest),
               "COMFYMESH_COMPILE": "0" if args.no_compile else "1", "COMFYMESH_COMPILE_BACKEND": args.backend}
        if args.batch_window_ms:
            # cross-job batching: padded UNet batches of 2, 4 and 8 jobs, graphed (not compiled) up front
            env |= {"COMFYMESH_BATCH_WINDOW_MS": str(args.batch_window_ms), "COMFYMESH_BATCH_MAX": "8",
                    "COMFYMESH_MAX_RUNNING_JOBS": "16"}
            entries += [{"ckpt": CKPT, "width": args.size, "height": args.size, "batch": n, "compile": False}
                        for n in (2, 4, 8) if n not in args.batches]
        manifest.write_text(json.dumps(entries))
        run = MeshRun(home, "fast", args, env)
        run.start()
        try:
            waited = run.wait_buckets(len(entries) * (1 if args.no_compile else 2), 0, args.compile_timeout)
            RESULTS["mesh_fast"] = {"cold_build": run.fast_logs(), "waited_for_buckets_s": waited}
            say(f"fast buckets: {run.fast_logs()}")
            res = run.measure("mesh_fast", png_ms)
            for key, png in list(res.items()):
                if key.endswith("_png0") and key in eager_png:
                    a = Image.open(io.BytesIO(png)).convert("RGB")
                    b = Image.open(io.BytesIO(eager_png[key])).convert("RGB")
                    res[key.replace("_png0", "_psnr_vs_eager_db")] = psnr(a, b)
            if args.concurrent:
                res["concurrent"] = run.concurrent(args.concurrent)
            RESULTS["mesh_fast"].update(strip_pngs(res))
            write(args)
            if elapsed() < args.deadline and not args.no_restart:
                restart_phase(run, args)
        finally:
            run.stop()


def restart_phase(run: MeshRun, args: argparse.Namespace) -> None:
    try:
        mark = len(run.mesh.logs)
        start = time.perf_counter()
        run.mesh.restart("diffusion")
        restart_s = time.perf_counter() - start
        first = run.job(1, seed=9001)
        entries = len(json.loads((run.home.parent / "warmup.json").read_text()))
        waited = run.wait_buckets(entries * (1 if args.no_compile else 2), mark, args.compile_timeout)
        after = run.job(1, seed=9002)
        RESULTS["mesh_fast"]["restart"] = {
            "stage_restart_s": restart_s, "first_job_ms": first["ms"], "first_job_nodes": first["nodes"],
            "restart_to_first_png_s": restart_s + first["ms"] / 1000,
            "buckets_ready_after_s": restart_s + first["ms"] / 1000 + waited,
            "builds": run.fast_logs(mark), "job_after_ready_ms": after["ms"]}
        say(f"restart: {RESULTS['mesh_fast']['restart']}")
    except Exception as exc:  # keep what was measured
        RESULTS["mesh_fast"]["restart_error"] = repr(exc)
        say(f"restart phase failed: {exc!r}")


def write(args: argparse.Namespace) -> None:
    RESULTS["elapsed_s"] = elapsed()
    if args.out:
        Path(args.out).write_text(json.dumps(RESULTS, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="data root (default: a temp folder)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint instead of full-size SD1.5 (CPU smoke)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--runs", type=int, default=5, help="timed warm runs per case (median reported)")
    parser.add_argument("--concurrent", type=int, default=16, help="jobs submitted at once (0: skip)")
    parser.add_argument("--compile-batches", default=None,
                        help="fast mesh: compile only these batch sizes' buckets (others stay graphed); default all")
    parser.add_argument("--batch-window-ms", type=float, default=0,
                        help="fast mesh: cross-job batching with this gather window (0: off, the default)")
    parser.add_argument("--concurrent-eager", action="store_true", help="the concurrent burst on the eager mesh too")
    parser.add_argument("--phases", default="inproc,mesh", help="inproc,mesh")
    parser.add_argument("--mesh", default="eager,fast", help="which mesh runs: eager,fast")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="fast mesh: CUDA graphs of the eager UNet only")
    parser.add_argument("--no-restart", action="store_true", help="fast mesh: skip the restart phase")
    parser.add_argument("--trace", action="store_true",
                        help="COMFYMESH_TRACE=1 in every service: each hop's median time after the POST (trace_ms)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the fast mesh")
    parser.add_argument("--compile-timeout", type=float, default=240)
    parser.add_argument("--deadline", type=float, default=1e9, help="skip later phases after this many seconds")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.mesh = args.mesh.split(",")
    if args.compile_batches is not None:
        args.compile_batches = [int(b) for b in args.compile_batches.split(",") if b]
    home = args.home or Path(tempfile.mkdtemp(prefix="comfymesh-gpu-bench-"))
    for folder in ("models/checkpoints", "input", "output"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    import torch

    RESULTS["device"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    RESULTS["torch"] = torch.__version__
    RESULTS["argv"] = sys.argv
    path = make_checkpoint(home, args)
    phases = args.phases.split(",")
    try:
        if "inproc" in phases:
            inproc_and_pipeline(path, args)
            write(args)
        if "mesh" in phases and elapsed() < args.deadline:
            mesh_phases(home, args)
    finally:
        write(args)
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(RESULTS, indent=1, default=str))


if __name__ == "__main__":
    main()
