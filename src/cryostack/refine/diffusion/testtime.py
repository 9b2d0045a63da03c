"""Test-time optimisation of the pretrained denoiser against a refinement objective (CryoNet.Refine).

Per case, only the denoiser's weights are optimised: each step runs the one-step denoiser on the
input model at a small fixed sigma, scores the output with the refinement objective (density +
geometry), and takes an Adam step on the weights. By default (``TestTimeConfig.residual``) the
output is the input plus the *change* of the denoiser's output since pretraining, so the
unadapted module is the identity: the pretrained one-step output itself is not precise enough
for a refined model (on 4uft it moves atoms by 0.16 Å and breaks bonds), and adapting the
weights back out of that costs most of the budget. A recycle is ``steps_per_recycle`` such steps;
by default every recycle denoises the same starting model (the paper's Algorithm 1), while
``feed_back=True`` makes each recycle start from the previous recycle's output instead (measured
worse here: the adapted weights then apply their correction twice). Recycling stops once the
best loss has not improved for ``patience`` recycles; the coordinates with the lowest loss seen
(the input included) are returned.

The model is placed first, and its peptide planes and rotamers fitted last, by the same
optimiser-independent stages as the direct optimiser (:mod:`cryostack.refine.stages`;
``RefineConfig.coarse_recycles``, ``rigid_steps``, ``fit_peptides``, ``fit_rotamers``), so the
two optimisers differ only in how the per-atom refinement moves atoms: the placed model is the
denoiser's input. The polish after each fitting stage is one recycle of the same test-time
scheme on the fitted model, starting again from the pretrained weights.

``TestTimeConfig.adapt_blocks`` trains only the last message-passing blocks; their input (the
frozen embeddings and earlier blocks, which depend only on the fixed input model) is computed
once, so a step costs about half as much with two of four blocks, but on the spike NTD the
loss fell less per second than with every weight adapted (docs/refine.md), which stays the
default.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

from cryostack.refine.diffusion.config import TestTimeConfig
from cryostack.refine.diffusion.featurize import AtomFeatures, featurize
from cryostack.refine.diffusion.model import AtomDenoiser, load_denoiser

METHOD = "diffusion"


def _atoms_of(objective):
    """The AtomArrays (or Structure) whose atom order the objective's coordinates follow."""
    for name in ("atoms", "structure"):
        obj = getattr(objective, name, None)
        if obj is not None:
            return obj
    raise TypeError("the diffusion optimiser needs objective.atoms (AtomArrays) or objective.structure")


def config_from(config, **overrides) -> TestTimeConfig:
    """A :class:`TestTimeConfig` from the shared ``RefineConfig`` and keyword overrides.

    Taken from ``config``: ``max_recycles``, ``steps_per_recycle``, ``patience``,
    ``min_improvement``, ``seed``, ``device`` and, if it has one, ``denoiser_weights``
    (checkpoint path; the packaged one otherwise). ``config.lr`` defaults to a coordinate step in Å
    for the direct optimiser, far too large for network weights, so it is used as the weight
    learning rate only when set away from ``RefineConfig``'s default.
    """
    ttc = TestTimeConfig()
    for name in ("max_recycles", "steps_per_recycle", "patience", "min_improvement", "seed", "device"):
        v = getattr(config, name, None)
        if v is not None:
            setattr(ttc, name, v)
    if getattr(config, "denoiser_weights", None):
        ttc.weights = str(config.denoiser_weights)
    lr = getattr(config, "lr", None)
    if lr is not None:
        default = getattr(type(config), "lr", None)
        if default is None or lr != default:
            ttc.lr = float(lr)
    for k, v in overrides.items():
        if not hasattr(ttc, k):
            raise TypeError(f"unknown diffusion option {k!r}")
        setattr(ttc, k, v)
    return ttc


def refine_diffusion(
    objective,
    config=None,
    progress=None,
    *,
    model: AtomDenoiser | None = None,
    feats: AtomFeatures | None = None,
    **overrides,
):
    """Refine the objective's model by test-time optimisation of the denoiser's weights.

    Args:
        objective: a :class:`~cryostack.refine.RefinementObjective` (``objective(coords)``,
            ``movable (N,)``, ``init_coords (N, 3)`` Å, ``atoms`` or ``structure``).
        config: the shared :class:`~cryostack.refine.RefineConfig` or ``None`` (see :func:`config_from`).
        progress: ``None`` or ``progress(recycle, loss, terms, cc)`` once per recycle.
        model: a denoiser to start from (default: ``weights=`` path or the packaged
            checkpoint); it is copied, never modified.
        overrides: :class:`TestTimeConfig` fields (``sigma_A``, ``lr``, ``residual``, ``weights``...).
    Returns:
        :class:`~cryostack.refine.RefineResult`: best-by-loss coordinates ``(N, 3)`` Å (the
        input counts, so the loss never gets worse) and one record per recycle.
    """
    from cryostack.refine.api import RecycleRecord, RefineResult, recycle_cc, terms_as_floats
    from cryostack.refine.stages import fit_peptides_and_polish, fit_rotamers_and_polish, place

    t0 = time.perf_counter()
    ttc = config_from(config, **overrides)
    stage_config = _stage_config(config)
    dev = torch.device(ttc.device)
    torch.manual_seed(ttc.seed)
    # Only copies of ``pretrained`` are ever trained, so the caller's model stays untouched.
    pretrained = model if model is not None else load_denoiser(ttc.weights, device=str(dev))
    if any(p.device != dev for p in pretrained.parameters()):
        pretrained = copy.deepcopy(pretrained).to(dev)  # the caller's model stays where it is
    net = _trainable_copy(pretrained, dev, ttc)
    feats = (feats if feats is not None else featurize(_atoms_of(objective))).to(dev)
    start = objective.init_coords.detach().to(dev, torch.float32)
    if feats.n_atoms != start.shape[0]:
        raise ValueError(f"atom features ({feats.n_atoms}) and objective coordinates ({start.shape[0]}) differ")
    x0 = place(objective, start, stage_config)
    movable = objective.movable.to(dev).bool()[:, None]
    opt = torch.optim.Adam(_adapted(net), lr=ttc.lr)

    with torch.no_grad():
        loss0, terms0 = objective(start)
    best_loss, best_coords, best_recycle = float(loss0), start.clone(), 0
    history = [RecycleRecord(0, best_loss, terms_as_floats(terms0), recycle_cc(objective, start, terms0), "start")]
    if progress is not None:
        progress(0, best_loss, history[0].terms, history[0].cc)
    x_in, stale = x0, 0
    # the graph and the pretrained offset depend only on the input: recomputed when feed_back moves it
    graph = net.graph(x_in, feats)
    base = _base_offset(pretrained, x_in, feats, graph, ttc)
    denoise = _denoiser_of(net, x_in, feats, graph, ttc)
    for recycle in range(1, ttc.max_recycles + 1):
        start_best = best_loss
        for _ in range(ttc.steps_per_recycle):
            out = torch.where(movable, denoise() - base, x0)
            loss, _ = objective(out)
            lv = float(loss.detach())
            if lv < best_loss:  # every evaluated output is a candidate
                best_loss, best_coords, best_recycle = lv, out.detach().clone(), recycle
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = torch.where(movable, denoise() - base, x0)
            loss, terms = objective(out)
        rec = RecycleRecord(recycle, float(loss), terms_as_floats(terms), recycle_cc(objective, out, terms))
        history.append(rec)
        if progress is not None:
            progress(recycle, rec.loss, rec.terms, rec.cc)
        if rec.loss < best_loss:
            best_loss, best_coords, best_recycle = rec.loss, out.clone(), recycle
        if best_loss < start_best - ttc.min_improvement * abs(start_best):
            stale = 0
        else:
            stale += 1
            if stale >= ttc.patience:
                break
        if ttc.feed_back:
            x_in = out.detach()
            graph = net.graph(x_in, feats)
            base = _base_offset(pretrained, x_in, feats, graph, ttc)
            denoise = _denoiser_of(net, x_in, feats, graph, ttc)
    fit_stats = peptide_stats = None

    def polish(x: torch.Tensor) -> torch.Tensor:
        return _adapt_once(pretrained, objective, x, feats, movable, ttc)

    if stage_config.fit_peptides:
        best_coords, best_recycle, best_loss, peptide_stats = fit_peptides_and_polish(
            objective, best_coords, best_loss, best_recycle, history, progress, polish
        )
    if stage_config.fit_rotamers:
        best_coords, best_recycle, fit_stats = fit_rotamers_and_polish(
            objective, best_coords, best_loss, best_recycle, history, progress, polish
        )
    result = RefineResult(
        coords=best_coords.cpu().numpy(),
        history=history,
        method=METHOD,
        best_recycle=best_recycle,
        wall_s=time.perf_counter() - t0,
        rotamer_fit=fit_stats,
        peptide_fit=peptide_stats,
    )
    # the case-adapted weights, for inspection: an extra attribute of this result, not a RefineResult field
    result.denoiser = net.eval()  # type: ignore[attr-defined]
    return result


def _stage_config(config):
    """The ``RefineConfig`` the shared stages run with: ``config`` (``RefineConfig`` or ``None``),
    except that an ``lr`` set for the denoiser's weights (see :func:`config_from`) does not become
    the placement's coordinate step."""
    import dataclasses

    from cryostack.refine.api import RefineConfig

    if config is not None and not isinstance(config, RefineConfig):
        raise TypeError(f"the diffusion optimiser takes a RefineConfig, not {type(config).__name__}")
    return dataclasses.replace(config or RefineConfig(), lr=RefineConfig.lr)


def _base_offset(
    pretrained: AtomDenoiser, x_in: torch.Tensor, feats: AtomFeatures, graph, ttc: TestTimeConfig
) -> torch.Tensor | float:
    """What the test-time output subtracts: ``(N, 3)`` Å, the pretrained denoiser's own move of
    ``x_in`` (``residual=True``), so that the unadapted module returns ``x_in`` exactly and only
    the case-adapted change of the weights moves atoms; 0 for the raw output (``residual=False``)."""
    if not ttc.residual:
        return 0.0
    with torch.no_grad():
        return pretrained(x_in, ttc.sigma_A, feats, graph=graph) - x_in


def _denoiser_of(
    net: AtomDenoiser, x_in: torch.Tensor, feats: AtomFeatures, graph, ttc: TestTimeConfig
) -> Callable[[], torch.Tensor]:
    """``() -> (N, 3)`` Å: the one-step output of ``net`` for the fixed input ``x_in`` at
    ``ttc.sigma_A`` with its current weights. With ``ttc.adapt_blocks`` only the last blocks are
    trained, so the frozen embeddings and earlier blocks are run once here, not at every step."""
    if ttc.adapt_blocks is None:
        return lambda: net(x_in, ttc.sigma_A, feats, graph=graph)
    with torch.no_grad():
        partial = net.forward_trunk(x_in, ttc.sigma_A, feats, graph=graph, n_blocks=_frozen_blocks(net, ttc))
    return lambda: net.forward_head(partial)


def _frozen_blocks(net: AtomDenoiser, ttc: TestTimeConfig) -> int:
    """How many leading message-passing blocks stay at their pretrained weights."""
    n = len(net.blocks)
    if ttc.adapt_blocks is None:
        return 0
    if not 1 <= ttc.adapt_blocks <= n:
        raise ValueError(f"adapt_blocks must be between 1 and {n} (the denoiser's blocks), got {ttc.adapt_blocks}")
    return n - ttc.adapt_blocks


def _adapted(net: AtomDenoiser) -> list[torch.nn.Parameter]:
    """The weights test-time optimisation changes (those left trainable by :func:`_trainable_copy`)."""
    return [p for p in net.parameters() if p.requires_grad]


def _trainable_copy(pretrained: AtomDenoiser, device, ttc: TestTimeConfig) -> AtomDenoiser:
    """A copy of ``pretrained`` on ``device`` in training mode; every weight trainable, or with
    ``ttc.adapt_blocks`` only those of the last blocks."""
    net = copy.deepcopy(pretrained).to(device).train()
    for p in net.parameters():
        p.requires_grad_(ttc.adapt_blocks is None)
    for block in list(net.blocks)[_frozen_blocks(net, ttc) :]:
        for p in block.parameters():
            p.requires_grad_(True)
    return net


def _adapt_once(
    pretrained: AtomDenoiser,
    objective,
    x_in: torch.Tensor,
    feats: AtomFeatures,
    movable: torch.Tensor,
    ttc: TestTimeConfig,
) -> torch.Tensor:
    """One recycle (``ttc.steps_per_recycle`` weight steps) of a fresh copy of the pretrained
    denoiser on ``x_in``; the lowest-loss output seen (``x_in`` itself if none is lower)."""
    net = _trainable_copy(pretrained, x_in.device, ttc)
    opt = torch.optim.Adam(_adapted(net), lr=ttc.lr)
    graph = net.graph(x_in, feats)
    base = _base_offset(pretrained, x_in, feats, graph, ttc)
    denoise = _denoiser_of(net, x_in, feats, graph, ttc)
    with torch.no_grad():
        best_loss, best = float(objective(x_in)[0]), x_in
    for step in range(ttc.steps_per_recycle + 1):
        out = torch.where(movable, denoise() - base, x_in)
        loss, _ = objective(out)
        if float(loss.detach()) < best_loss:
            best_loss, best = float(loss.detach()), out.detach().clone()
        if step == ttc.steps_per_recycle:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return best
