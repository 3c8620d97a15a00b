"""Which notebook, with which parameters, makes which paper figure (the registry ``FIGURES``),
and the README's figure and claims tables; :mod:`paperlib.make_figures` executes them
(``make figures``).

A paper figure is a (notebook, parameters) pair with an id: ``figures/<id>.pdf|png``. The main
figures run their notebook in place (``notebooks/fig1.ipynb``); the appendix variants run the same
notebook with other parameters into ``notebooks/appendix/<id>.ipynb``. Parameters can differ by
preset: ``params`` hold at every preset, ``scaled`` replaces some of them at ``cpu`` and ``smoke``
(the 2-core version of the same panel). ``scaled=None`` marks a figure whose smallest honest
version does not fit the 2-core budget: it runs at ``paper`` only and ``note`` says why.

``make figures`` writes the committed files only for the ``cpu`` preset from the default store
(``paths.committed_outputs``); other presets and stores write under ``build/<preset>/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .paths import REPO

NOTEBOOK_DIR = paths.NOTEBOOKS
APPENDIX_DIR = NOTEBOOK_DIR / "appendix"


@dataclass(frozen=True)
class Figure:
    id: str  # figures/<id>.pdf and .png
    notebook: str  # source notebook, notebooks/<notebook>.ipynb
    paper: str  # the figure of the paper it reproduces
    params: dict = field(default_factory=dict)  # papermill parameters at every preset
    scaled: dict | None = field(default_factory=dict)  # replaced at cpu / smoke; None: paper only
    note: str = ""  # what the cpu version changes, or why it does not run at cpu

    @property
    def appendix(self) -> bool:
        return self.id not in MAIN_IDS

    @property
    def output(self) -> Path:
        """The executed notebook that is committed."""
        return self.output_under(REPO)

    def output_under(self, root: Path) -> Path:
        """The executed notebook under an output root (``<root>/notebooks/...``)."""
        if self.appendix:
            return root / "notebooks" / "appendix" / f"{self.id}.ipynb"
        return root / "notebooks" / f"{self.notebook}.ipynb"

    def runs_at(self, preset: str) -> bool:
        return preset == "paper" or self.scaled is not None

    def parameters(self, preset: str) -> dict:
        """Papermill parameters of this figure at ``preset`` (PRESET and FIG_ID included)."""
        p = {"PRESET": preset, **self.params}
        if preset != "paper":
            p.update(self.scaled or {})
        if self.appendix:
            p.update(FIG_ID=self.id)
        return p


# SVAG's l: the paper and the authors sweep l = 1 … 32; at cpu, 1 … 8 (each doubling of l doubles
# a run's steps, and the claims compare l = 4 with l = 8 as the paper compares the largest two).
PAPER_LS = [1, 2, 4, 8, 16, 32]
CPU_LS = [1, 2, 4, 8]

MAIN_IDS = ("fig1", "fig3", "fig4", "figA-sampling", "theory-sde", "theory-noise",
            "monitor-mlp")  # in place

FIGURES: tuple[Figure, ...] = (
    Figure("fig1", "fig1", "Fig 1: SGD vs NGD vs GD", scaled={"SEEDS": [0, 1, 2, 3, 4]},
           note="cpu: five seeds. With three, 'NGD matches SGD' (1.12, 95 % interval "
                "[0.13, 2.26], against ≤ 2) and 'noise helps' (3.92 [2.77, 5.03], against ≥ 3) "
                "were inconclusive. Seeds 3 and 4 add two SGD runs (≈ 16 s) and two GD and two "
                "NGD runs (≈ 4 min each on 2 idle cores); with five seeds the figure takes "
                "23.1 min from scratch (measured 2026-12-01)"),
    Figure("fig3", "fig3_lsr", "Fig 3: predicting the failure of the LSR"),
    Figure("fig3b", "fig3_lsr", "Fig 3, second panel: PreResNet-32 GN",
           params={"NORM": "gn"}, scaled={"NORM": "bn", "SEEDS": [0, 1]},
           note="cpu: Fig 3's cpu panel is already the GN convnet, so this panel shows the "
                "other normalization (BN) on the same net, as the paper's first two panels show "
                "both on one net; two seeds (with one, the Thm 5.6 row was inconclusive: 1.03, "
                "95 % interval [0.96, 1.12], from evaluation noise alone)"),
    Figure("fig3c", "fig3_lsr", "Fig 3, third panel: VGG-19 GN",
           params={"ARCH": "vgg19", "NORM": "gn"}, scaled=None,
           note="paper only: measured 2026-11-30, VGG-19 GN at quarter width on Fig 3's cpu "
                "data (16×16, n = 10000, 24 epochs, η = 0.8·B/128) does not train: every B from "
                "16 to 1024 ends at chance (90.0 % test error; the loss sits at ln 10 from step "
                "20), and the sweep took 43 min on 2 cores. A quarter-width GN VGG-16 collapses "
                "the same way at η = 0.1 and trains at 0.02: a cpu panel would need Fig 3's "
                "LSR line at 1/5 of its η (0.16·B/128), which is not the paper's recipe"),
    Figure("fig4", "fig4_svag", "Fig 4: SVAG converges", params={"LS": PAPER_LS},
           scaled={"LS": CPU_LS, "SEEDS": [0, 1, 2, 3]},
           note="cpu: four seeds. With two, the small-batch row 'SVAG limit matches SGD' "
                "passed on the machine that trained them (0.75, 95 % interval [0.06, 1.67], "
                "against ≤ 2) and was inconclusive when retrained on this one (1.42 "
                "[0.40, 2.44], measured 2026-12-01); seeds 2 and 3 cost about 4 min"),
    Figure("figA-sampling", "sampling", "App.: sampling schemes"),
    Figure("theory-sde", "theory-sde", "Lemma 4.7, Thm 4.3, App. B.1 (theory-lemma47, "
           "theory-weak-ou, theory-weak-double-well, theory-lsr)"),
    Figure("theory-noise", "theory-noise", "Eqs. 10-12, Thm 5.2, App. B.3 "
           "(theory-equilibrium, theory-tail-index)"),
    Figure("monitor-mlp", "noise_monitor", "Beyond the paper: Thm 5.6 on an MLP, G/N from "
           "NoiseMonitor in a plain loop with gradient accumulation"),
    # --- NGD (App. F.3): Fig 1 repeated -----------------------------------------------------
    Figure("figA-ngd-small-batch", "fig1", "App. F.3: NGD with a smaller batch size",
           params={"BATCH_SIZE": 64, "SEEDS": [0], "GAP_BATCH_SIZES": []},
           scaled={"BATCH_SIZE": 8, "SEEDS": [0, 1]},
           note="paper: B = 64 (our choice; our copy of the paper omits the appendix's value); "
                "cpu: B = 8, half the main figure's; GD does not depend on B and is shared "
                "with fig1"),
    Figure("figA-ngd-wide", "fig1", "App. F.3: NGD with a 4x wide PreResNet-32 GN",
           params={"WIDTH": 4.0, "SEEDS": [0], "GAP_BATCH_SIZES": []},
           scaled={"WIDTH": 2.0, "SEEDS": [0, 1]},
           note="cpu: the convnet at width 2 (2× Fig 1's), two seeds (with one, no row has a "
                "seed spread, so every accuracy row is inconclusive); each full-data GD / NGD "
                "run is ≈ 8 min on 2 idle cores, the panel 17.0 min from scratch (measured "
                "2026-12-01)"),
    # --- further LSR verification (App. F): Fig 3's sweep on other nets -------------------
    Figure("figA-lsr-resnet32", "fig3_lsr", "App. F: LSR on ResNet-32 BN (not scale-invariant)",
           params={"ARCH": "resnet32", "NORM": "bn", "SEEDS": [0]},
           scaled={"ARCH": "resnet8", "WIDTH": 1.0, "SEEDS": [0, 1]},
           note="cpu: ResNet-8 (the same post-activation recipe, 16/32/64 channels), two seeds "
                "(the claims' seed noise needs two)"),
    Figure("figA-lsr-4x-bn", "fig3_lsr", "App. F: LSR on PreResNet-32 4x BN",
           params={"WIDTH": 4.0, "NORM": "bn", "SEEDS": [0]}, scaled={"SEEDS": [0, 1]},
           note="cpu: Fig 3's cpu sweep on the BN convnet at width 4 (2× Fig 3's cpu width; "
                "width 8 would cost ≈ 3 core-hours per seed), two seeds: 37.2 + 24.2 min on 2 "
                "cores shared with other work (measured 2026-11-30). Its Thm 5.6 row stays "
                "inconclusive with two (0.99, 95 % interval [0.00, 1.08]; one seed: 0.98 "
                "[0.92, 1.08]): B = 1024 fails against B* = 517, a factor 1.98, on the "
                "factor-2 line that more seeds would narrow around but not move off"),
    Figure("figA-lsr-4x-gn", "fig3_lsr", "App. F: LSR on PreResNet-32 4x GN",
           params={"WIDTH": 4.0, "NORM": "gn", "SEEDS": [0]}, scaled={"SEEDS": [0, 1]},
           note="cpu: Fig 3's cpu sweep on the GN convnet at width 4 (2× Fig 3's cpu width; "
                "width 8 would cost ≈ 3 core-hours per seed), two seeds (with one, the Thm 5.6 "
                "row was inconclusive: 0.69, 95 % interval [0.69, 2.74]); 24.5 + 28.5 min on "
                "2 cores, each seed trained from an empty store while other work shared them "
                "(measured 2026-11-30)"),
    # --- SVAG groups (App. F): Fig 4 on other settings ------------------------------------
    Figure("figA-svag-baselines", "fig4_svag", "App. F: SVAG baselines (the other norm)",
           params={"NORM": "gn", "SEEDS": [0], "LS": PAPER_LS},
           scaled={"NORM": "bn", "SEEDS": [0, 1], "LS": CPU_LS},
           note="Fig 4 uses BN at paper and GN at cpu; this group shows the other one, "
                "small and large batch; two seeds at cpu (the claims' seed noise needs two)"),
    Figure("figA-svag-4x", "fig4_svag", "App. F: SVAG on a 4x wide PreResNet-32 BN",
           params={"WIDTH": 4.0, "SEEDS": [0], "PANELS": [[128, 0.8]], "LS": PAPER_LS},
           scaled={"WIDTH": 2.0, "PANELS": [[16, 0.4]], "SEEDS": [0, 1], "LS": CPU_LS},
           note="cpu: the convnet at width 2 (2× the main figure's), small batch, two seeds"),
    Figure("figA-svag-vgg16-bn", "fig4_svag", "App. F: SVAG on VGG-16 BN",
           params={"ARCH": "vgg16", "NORM": "bn", "SEEDS": [0], "PANELS": [[128, 0.8]],
                   "LS": PAPER_LS},
           scaled={"WIDTH": 0.25, "PANELS": [[16, 0.05]], "LS": CPU_LS},
           note="cpu: VGG-16 BN at quarter width (all 13 conv layers) on the Fig 4 cpu data "
                "(8×8, n = 2000), the small-batch panel B = 16, one seed, at η = 0.05: 21.5 min "
                "from scratch on 2 idle cores (measured 2026-12-01). Not the Fig 4 cpu "
                "panel's η = 0.4, at which this net barely learns (final test accuracy 16–21 %, "
                "its l = 4 and l = 8 runs 4.6 points apart); l = 1 runs ended at 25.1 % "
                "(η = 0.2), 38.8 % (0.1) and 41.6 % (0.05), so the panel takes 0.05"),
    Figure("figA-svag-vgg16-gn", "fig4_svag", "App. F: SVAG on VGG-16 GN",
           params={"ARCH": "vgg16", "NORM": "gn", "SEEDS": [0], "PANELS": [[128, 0.8]],
                   "LS": PAPER_LS},
           scaled={"WIDTH": 0.25, "PANELS": [[16, 0.02]], "LS": CPU_LS},
           note="cpu: VGG-16 at quarter width (16 … 128 channels, all 13 conv layers) on the "
                "Fig 4 cpu data (8×8, n = 2000), the small-batch panel, one seed, at η = 0.02: "
                "the quarter-width GN VGG-16 "
                "collapses to chance within 50 steps at η = 0.4 and 0.1 (train loss stuck at "
                "ln 10; measured 2026-11-30) and trains at 0.02"),
    Figure("figA-svag-no-norm", "fig4_svag", "App. F: SVAG on an unnormalized VGG (η = 0.01)",
           params={"ARCH": "vgg16", "NORM": "none", "SEEDS": [0], "PANELS": [[128, 0.01]],
                   "LS": PAPER_LS},
           scaled={"ARCH": "convnet", "PANELS": [[16, 0.05]], "SEEDS": [0, 1], "LS": CPU_LS},
           note="cpu: the convnet without normalization at B = 16, two seeds"),
    Figure("figA-svag-triangle", "fig4_svag", "App. F: SVAG with the triangle LR schedule",
           params={"SCHEDULE": "triangle", "SEEDS": [0], "LS": PAPER_LS},
           scaled={"SEEDS": [0, 1], "LS": CPU_LS},
           note="two cycles over the whole run; every knot stretches with l; two seeds at cpu"),
    Figure("figA-svag-cosine", "fig4_svag", "App. F: SVAG with the cosine LR schedule",
           params={"SCHEDULE": "cosine", "SEEDS": [0], "LS": PAPER_LS},
           scaled={"SEEDS": [0, 1], "LS": CPU_LS},
           note="η → η/800 over the run; two seeds at cpu"),
)


def describe(fig_id: str, preset: str) -> str:
    """One paragraph for the top of an executed notebook: what figure this is, at which preset,
    with which registry parameters and what they change."""
    f = {f.id: f for f in FIGURES}.get(fig_id)
    if f is None:
        return f"{fig_id}: not in the registry (custom parameters), preset {preset}"
    params = {k: v for k, v in f.parameters(preset).items()
              if k not in ("PRESET", "FIG_ID", "FIG_DIR")}
    text = f"{f.id} — {f.paper}; preset {preset}"
    if params:
        text += "; parameters " + ", ".join(f"{k}={v!r}" for k, v in params.items())
    return text + (f". {f.note}" if f.note else "")


def default_parameters(notebook: str) -> dict:
    """The values of the ``parameters`` cell of ``notebooks/<notebook>.ipynb``."""
    import ast

    nb = json.loads((NOTEBOOK_DIR / f"{notebook}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    return {node.targets[0].id: ast.literal_eval(node.value)
            for node in ast.parse("".join(cell["source"])).body}


def registered_parameters(fig_id: str, preset: str) -> dict | None:
    """Every parameter of figure ``fig_id`` as ``make figures`` runs it at ``preset`` (the
    notebook's defaults with the registry's values), or None for an id not in the registry."""
    f = {f.id: f for f in FIGURES}.get(fig_id)
    if f is None or not f.runs_at(preset):
        return None
    return {**default_parameters(f.notebook), **f.parameters(preset)}


def _fmt_params(p: dict) -> str:
    p = {k: v for k, v in p.items() if k not in ("PRESET", "FIG_ID", "FIG_DIR")}
    return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in p.items()) or "defaults"


def figure_table(preset: str = "cpu", timings: Path | None = None) -> str:
    """The README's table: paper figure → id → notebook → parameters → measured wall time."""
    path = timings or paths.FIGURES / "timings.json"
    measured = json.loads(path.read_text()).get(preset, {}) if path.exists() else {}
    lines = [f"| paper figure | id (`figures/<id>.*`) | notebook → executed copy | parameters "
             f"at `{preset}` | parameters at `paper` | wall time at `{preset}` (2 cores) |",
             "|---|---|---|---|---|---|"]
    for f in FIGURES:
        nb = f"`{f.notebook}.ipynb`"
        if f.appendix:
            nb += f" → `appendix/{f.id}.ipynb`"
        if not f.runs_at(preset):
            here, wall = "paper only", f.note.removeprefix("paper only: ")
        else:
            here = _fmt_params(f.parameters(preset))
            e = measured.get(f.id) if isinstance(measured.get(f.id), dict) else {}
            parts = []
            complete = e.get("results_computed") in (None, e.get("results"))
            if "wall_s_with_training" in e and complete:
                parts.append(f"{e['wall_s_with_training'] / 60:.1f} min from scratch")
            elif e.get("train_s"):  # not measured end to end for its current runs
                parts.append(f"≈ {e['train_s'] / 2 / 60:.1f} min from scratch (estimated: its "
                             f"{e['results']} runs' stored training time over 2 workers)")
            if "wall_s" in e:
                parts.append(f"{e['wall_s']:.0f} s re-plot")
            wall = ", ".join(parts) or "not measured"
        lines.append(f"| {f.paper} | `{f.id}` | {nb} | {here} | "
                     f"{_fmt_params(f.parameters('paper'))} | {wall} |")
    return "\n".join(lines)


def claims_markdown(fig_dir: Path | None = None) -> str:
    """The README's claims table, from the ``figures/<id>.claims.csv`` the notebooks write."""
    import pandas as pd

    fig_dir = fig_dir or paths.FIGURES
    lines = ["| figure | claim | paper | measured [95 % interval] | threshold | verdict | "
             "seeds / sample | uncertainty |",
             "|---|---|---|---|---|---|---|---|"]
    for f in FIGURES:
        path = fig_dir / f"{f.id}.claims.csv"
        if not path.exists():
            continue
        for r in pd.read_csv(path, dtype=str, keep_default_na=False).itertuples():
            cells = [f"`{f.id}`", r.claim, r.paper, f"{r.measured} {r.interval}", r.threshold,
                     f"**{r.verdict}**", r.seeds, r.uncertainty]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def select(only: list[str] | None = None) -> list[Figure]:
    """Figures by id (or by notebook name for the main ones, e.g. ``fig3_lsr``)."""
    if not only:
        return list(FIGURES)
    by_name = {f.id: f for f in FIGURES} | {f.notebook: f for f in FIGURES if not f.appendix}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ValueError(f"figure(s) {unknown} not found; available: {[f.id for f in FIGURES]}")
    ids = list(dict.fromkeys(by_name[n].id for n in only))
    return [f for f in FIGURES if f.id in ids]


def notebook_paths() -> list[Path]:
    """The source notebooks (each runs at smoke in the tests)."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))
