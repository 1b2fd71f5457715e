"""Does a VLA checkpoint see where the object is? A linear probe at each stage of the VLM.

    python benchmarks/probe_latents.py [--checkpoint policy/default_model] [--compare OTHER] [--episodes 500]

Resets the twin on `--episodes` seeds of a pick task (the object's position is randomized every episode), renders
both cameras, and takes views of the same observation: raw pixels (every 4th pixel) and, per checkpoint, the vision
tower's output, the LM's last hidden states (the latents that stage 1's RL agent learns on) and the token learner's
pooling of them. A ridge regression (5-fold cross-validation, best of a few regularizers) predicts the object's
table (x, y) from each view. Printed per view: held-out RMSE in cm and R^2 (0: no better than the mean position; the
mean predictor's RMSE is printed too). The last line is the gate: RMSE from the latents <= 1.5 cm.

If the pixels predict the position and the latents do not, neither the SFT head nor an RL actor on the latents can
localize the object: a pick task cannot be learned in latent space, whatever the RL settings (see README, "Measured").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")


def ridge_cv(x: np.ndarray, y: np.ndarray, lam: float, folds: int = 5) -> tuple[float, float]:
    """Held-out RMSE (in y's units) and R^2 of ridge regression x -> y, standardized features, dual form."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    idx = np.arange(len(x))
    errors = []
    for test in np.array_split(idx, folds):
        train = np.setdiff1d(idx, test)
        a, y_mean = x[train], y[train].mean(0)
        alpha = np.linalg.solve(a @ a.T + lam * np.eye(len(train)), y[train] - y_mean)  # n x n: cheap for wide x
        errors.append(x[test] @ (a.T @ alpha) + y_mean - y[test])
    e = np.concatenate(errors)
    return float(np.sqrt((e ** 2).sum(1).mean())), float(1.0 - (e ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def _views(vla, images, instruction) -> dict[str, np.ndarray]:
    """The stages of one VLA for one observation (flattened): vision output, query outputs, LM latents, and the
    token learner's pooled latents (what the RL agent reads with latent_input: pooled)."""
    import torch
    pixel_values = vla._images_tensor(images)
    if getattr(vla, "is_towers", False):
        vision = vla.vlm.vision_features(pixel_values)
    else:
        vision = vla.vlm.vision_model(pixel_values=pixel_values).last_hidden_state
    latents = vla.encode(images, [instruction])
    out = {"vision": vision, "latents": latents, "latents_pooled": vla.head.token_learner(latents)}
    if getattr(vla.vlm, "config", None) is not None and getattr(vla.vlm.config, "object_readout", False):
        out["readout"] = vla.vlm.object_position(latents)  # the model's own trained readout (normalized xyz)
    return {k: v.reshape(-1).float().numpy() for k, v in out.items() if torch.is_tensor(v)}


def collect(checkpoints: dict[str, str], task: str, episodes: int, seed0: int, image_size: int
            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    import torch
    from policy.model import load_vla
    from robot_server.gym_env import TwinEnv
    from tqdm import tqdm

    from sim_twin import seeds
    torch.set_num_threads(1)
    vlas = {name: load_vla(path).eval() for name, path in checkpoints.items()}
    cameras = tuple(next(iter(vlas.values())).cfg.cameras)
    env = TwinEnv(task=task, cameras=cameras, image_size=image_size)
    views: dict[str, list] = {"pixels (every 4th)": []}
    positions = []
    try:
        with torch.inference_mode():
            for i in tqdm(range(episodes), desc="probe resets", unit="reset"):
                raw, info = env.reset(seed=seeds.seed("probe", seed0 + i))
                images = np.stack([raw["images"][c] for c in cameras])[None]
                views["pixels (every 4th)"].append(images[0, :, ::4, ::4].reshape(-1) / 255.0)
                for name, vla in vlas.items():
                    for stage, x in _views(vla, images, info["instruction"]).items():
                        views.setdefault(f"{name}: {stage}", []).append(x)
                positions.append(env.twin.object_pos(env.twin.task.objects[0])[:2])
    finally:
        env.close()
    return {k: np.asarray(v, dtype=np.float64) for k, v in views.items()}, np.asarray(positions)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="policy/default_model")
    ap.add_argument("--compare", default=None, help="another checkpoint probed on the same resets (e.g. the old model)")
    ap.add_argument("--task", default="pick_red_block", help="a task whose first object's position is randomized")
    ap.add_argument("--episodes", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=128, help="render size (each VLA resizes to its input)")
    ap.add_argument("--seed", type=int, default=0, help="first index in the probe's own seed block (sim_twin/seeds.py)")
    ap.add_argument("--gate-rmse-cm", type=float, default=1.5)
    args = ap.parse_args(argv)
    ckpts = {"model": args.checkpoint}
    if args.compare:
        ckpts["compare"] = args.compare
    views, y = collect(ckpts, args.task, args.episodes, args.seed, args.image_size)
    mean_rmse = float(np.sqrt(((y - y.mean(0)) ** 2).sum(1).mean()))
    print(f"{args.task}, {args.episodes} resets (probe seeds {args.seed}+): predicting the mean position gives RMSE "
          f"{100 * mean_rmse:.2f} cm; model = {args.checkpoint}"
          + (f", compare = {args.compare}" if args.compare else ""))
    rows = {}
    for name in [k for k in views if k.endswith(": readout")]:  # no fit: the trained readout's own error
        from policy.towers import OBJECT_CENTER, OBJECT_SCALE
        guess = views.pop(name)[:, :2] * OBJECT_SCALE + np.asarray(OBJECT_CENTER[:2])
        err = guess - y
        rows[name] = {"view": name + " (trained, no probe fit)", "dim": 3,
                      "rmse_cm": round(100 * float(np.sqrt((err ** 2).sum(1).mean())), 2),
                      "r2": round(1.0 - float((err ** 2).sum() / ((y - y.mean(0)) ** 2).sum()), 3)}
        print(json.dumps(rows[name]), flush=True)
    for name, x in views.items():
        rmse, r2, lam = min((ridge_cv(x, y, lam) + (lam,) for lam in (0.1, 1.0, 10.0, 100.0, 1e3, 1e4)),
                            key=lambda r: r[0])
        rows[name] = {"view": name, "dim": x.shape[1], "rmse_cm": round(100 * rmse, 2), "r2": round(r2, 3),
                      "lambda": lam}
        print(json.dumps(rows[name]), flush=True)
    lat = rows["model: latents"]
    ok = lat["rmse_cm"] <= args.gate_rmse_cm
    print(f"probe gate (object x, y from the RL latents, {args.episodes} resets): RMSE {lat['rmse_cm']:.2f} cm, "
          f"R^2 {lat['r2']:.3f} (goal <= {args.gate_rmse_cm} cm): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
