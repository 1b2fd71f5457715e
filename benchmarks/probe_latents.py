"""Does a VLA checkpoint see where the object is? A linear probe at each stage of the VLM.

    python benchmarks/probe_latents.py --checkpoint policy/default_model [--task pick_red_block] [--episodes 120]

Resets the twin on `--episodes` seeds of a pick task (the object's position is randomized every episode), renders
both cameras, and takes four views of the same observation: raw pixels (every 4th pixel), the vision tower's patch
tokens, the Q-Former's query outputs (after the language projection) and the LM's last hidden states (the latents
that stage 1's RL agent learns on). A ridge regression (5-fold cross-validation, best of a few regularizers) predicts
the object's table (x, y) from each view. Printed per stage: held-out RMSE in cm, R^2 (0: no better than the mean
position; the mean predictor's RMSE is printed too) and the spread of the features across episodes.

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


def collect(checkpoint: str, task: str, episodes: int, seed0: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    import torch
    from policy.model import load_vla
    from robot_server.gym_env import TwinEnv
    torch.set_num_threads(1)
    vla = load_vla(checkpoint).eval()
    env = TwinEnv(task=task, cameras=tuple(vla.cfg.cameras), image_size=vla.image_size)
    views: dict[str, list] = {"pixels": [], "vision_patches": [], "qformer_queries": [], "lm_latents": []}
    positions = []
    try:
        with torch.inference_mode():
            for i in range(episodes):
                raw, info = env.reset(seed=seed0 + i)
                images = np.stack([raw["images"][c] for c in vla.cfg.cameras])[None]
                pixel_values = vla._images_tensor(images)
                views["pixels"].append(images[0, :, ::4, ::4].reshape(-1) / 255.0)
                views["vision_patches"].append(vla.vlm.vision_model(pixel_values=pixel_values).last_hidden_state
                                               .reshape(-1).float().numpy())
                views["qformer_queries"].append(vla.vlm.get_image_features(pixel_values=pixel_values, return_dict=True)
                                                .pooler_output.reshape(-1).float().numpy())
                views["lm_latents"].append(vla.encode(images, [info["instruction"]]).reshape(-1).float().numpy())
                positions.append(env.twin.object_pos(env.twin.task.objects[0])[:2])
    finally:
        env.close()
    return {k: np.asarray(v, dtype=np.float64) for k, v in views.items()}, np.asarray(positions)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="policy/default_model")
    ap.add_argument("--task", default="pick_red_block", help="a task whose first object's position is randomized")
    ap.add_argument("--episodes", type=int, default=120)
    ap.add_argument("--seed", type=int, default=2000, help="first reset seed (away from the training seeds)")
    args = ap.parse_args(argv)
    views, y = collect(args.checkpoint, args.task, args.episodes, args.seed)
    mean_rmse = float(np.sqrt(((y - y.mean(0)) ** 2).sum(1).mean()))
    print(f"{args.task}, {args.episodes} episodes: predicting the mean position gives RMSE {100 * mean_rmse:.2f} cm")
    rows = []
    for name, x in views.items():
        rmse, r2, lam = min((ridge_cv(x, y, lam) + (lam,) for lam in (1.0, 10.0, 100.0, 1e3, 1e4)),
                            key=lambda r: r[0])
        rows.append({"stage": name, "dim": x.shape[1], "rmse_cm": round(100 * rmse, 2), "r2": round(r2, 3),
                     "lambda": lam, "feature_std_across_episodes": round(float(x.std(0).mean()), 5)})
        print(json.dumps(rows[-1]), flush=True)
    pix, lat = rows[0], rows[-1]
    print(f"position in the latents vs the pixels: R^2 {lat['r2']:.2f} vs {pix['r2']:.2f} "
          f"(ratio of RMSE latents/pixels {lat['rmse_cm'] / pix['rmse_cm']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
