"""Peers: lucidrains' `hyper-connections` HC and mHC as residual variants inside OUR GPT.

"What does mHC cost?" needs a yardstick besides our own code: the public implementation people
actually `pip install`. To compare connections and not models, a peer runs inside the same
GPT (same attention, MLP, norms, embedding, optimiser) as ours; only the residual connection
is the peer's module, called through its own API:

    branch_input, add_residual = peer(streams);  streams = add_residual(F(branch_input))

hyper-connections (checked against 0.4.11) folds the n streams into the batch dimension,
'(b s) t d' with the stream index fastest, where our model carries (B, T, n, C). Converting
around every sub-layer would charge the peer two extra copies of the streams per sub-layer,
so the stream tensor stays in the peer's layout for the whole forward instead: `expand` and
`reduce` are the package's own expand/reduce functions, and the model body, which only ever
hands the stream tensor to `residual(x, F)`, runs unchanged.

The peers are NOT in the variant registry (training grids, configs): they exist to be timed
and sanity-checked by `mhc-bench bench model --peers ...`. The package is optional (the
`peers` extra) and imported only when a peer is built; `PeerUnavailable` says why it cannot be.

What differs from ours (hyper-connections 0.4.11, read from its source; goes into `note`):
  both   per-stream RMSNorm with a learned gain; one projection C -> 1 + n shared by all
         streams gives stream i's H_pre entry and where stream i goes (column i of our
         H_res[to, from]), C -> 1 its H_post entry, so stream i's coefficients depend on x_i
         only; projections start at zero, so their scales (1e-2) and the norm gains get no
         gradient on the first step.
  HC     tanh, one shared scale for pre and res; coefficients in the stream / autocast dtype.
  mHC    not the paper's single RMSNorm over the flattened nC stream and one nC -> n² + 2n
         projection φ; H_pre = σ (logits 1 on the layer's stream, 0 elsewhere: 0.73 / 0.5),
         H_post = 2σ (logit 1 on every stream), H_res = Sinkhorn of logits I (e / (e + n - 1)
         on the diagonal: mixing from step 0; ours starts ≈ I). Its Sinkhorn normalises, in
         our orientation H_res[to, from], rows first and columns last (columns exact), like
         our sk_mode=kernel without eps; `sinkhorn_iters` = our variant.sk_iters.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from kernels.errors import UserError, did_you_mean
from variants.base import Mixing, Residual, ResidualVariant
from variants.registry import VariantConfig

PACKAGE = "hyper-connections"  # the distribution (pip) name
MODULE = "hyper_connections"  # its import name


@dataclass(frozen=True)
class PeerSpec:
    name: str  # e.g. "peer:hyper-connections-mhc"
    cls_name: str  # the class exported by the package
    counterpart: str  # our variant whose config (n_streams, sk_iters) the peer is matched to
    differs: str  # what differs from the counterpart, for the bench table's note


PEERS: dict[str, PeerSpec] = {s.name: s for s in (
    PeerSpec("peer:hyper-connections-hc", "HyperConnections", "hc",
             "per-stream RMSNorm with gain, one C->1+n projection shared by the streams, one scale for pre and res, "
             "coefficients in the autocast dtype"),
    PeerSpec("peer:hyper-connections-mhc", "ManifoldConstrainedHyperConnections", "mhc",
             "per-stream RMSNorm with gain and one C->1+n projection shared by the streams (not one nC->n^2+2n phi), "
             "H_res logits init I (mixes from step 0), H_post 2*sigmoid(1) on every stream, Sinkhorn rows first / "
             "columns exact (our sk_mode=kernel order)"),
)}
DEFAULT_N_STREAMS = 4  # as our hc and mhc


class PeerUnavailable(Exception):
    """The peer package cannot be imported, or no longer has the API this adapter calls."""


def import_package():
    """The `hyper_connections` module, or PeerUnavailable with the reason."""
    try:
        return importlib.import_module(MODULE)
    except Exception as e:  # not installed, or broken on import
        raise PeerUnavailable(f"{PACKAGE} not importable ({type(e).__name__}: {e}); "
                              f"pip install -c constraints.txt -e '.[peers]'") from None


def package_version() -> str | None:
    """The installed distribution's version, e.g. '0.4.11', or None (the module has no __version__)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return None


class PeerResidual(Residual):
    """One peer connection around one sub-layer; streams stay in the peer's (B n, T, C) layout.

    While `recording` is on, `last_h_res` holds the H_res the peer applied, as (B, T, n, n)
    in OUR orientation (new_i = Σ_j H[i, j] x_j), captured by wrapping the peer's own
    `residual_mix_constraint_fn` (mHC only; HC has no constraint function to observe).
    """

    def __init__(self, cfg: VariantConfig, d_model: int, n_streams: int, index: int, n_sublayers: int, peer: nn.Module):
        super().__init__(cfg, d_model, n_streams, index, n_sublayers)
        self.peer = peer
        self.last_h_res: Tensor | None = None
        self._tokens: tuple[int, int] = (0, 0)
        constraint = getattr(peer, "residual_mix_constraint_fn", None)
        if callable(constraint):
            peer.residual_mix_constraint_fn = self._observed(constraint)

    def _observed(self, constraint: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def constrained(logits: Tensor) -> Tensor:
            out = constraint(logits)
            if self.recording:  # theirs is A[from, to] per (proposal, b, t, frac): ours is its transpose
                B, T = self._tokens
                self.last_h_res = out.detach().reshape(-1, B, T, self.n, self.n).mean(0).transpose(-1, -2)
            return out

        return constrained

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.recording:
            self._tokens = (x.shape[0] // self.n, x.shape[1])
        branch_input, add_residual = self.peer(x)
        return add_residual(sublayer(branch_input))

    def prepare(self, x: Tensor) -> tuple[Tensor, Mixing]:
        raise NotImplementedError("a peer connection runs whole (forward); its coefficients are not exposed as a Mixing")

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Like ours: the input-dependent projections (`dynamic_*_fn`) decay; biases, scales and gains do not."""
        return [p for name, p in self.peer.named_parameters() if not name.endswith("_fn")]


class PeerVariant(ResidualVariant):
    """A peer's connection class behind our variant interface, matched to our counterpart's config."""

    default_n_streams = DEFAULT_N_STREAMS
    n_range = (1, 64)

    def __init__(self, spec: PeerSpec, cfg: VariantConfig, d_model: int, n_sublayers: int):
        self.spec = spec
        package = import_package()
        self.cls = getattr(package, spec.cls_name, None)
        expand_reduce = getattr(package, "get_expand_reduce_stream_functions", None)
        if self.cls is None or expand_reduce is None:
            raise PeerUnavailable(f"{PACKAGE} {package_version()} has no {spec.cls_name} / get_expand_reduce_stream_functions "
                                  f"(API drift; this adapter was written against 0.4.11)")
        self.version = package_version()
        super().__init__(cfg, d_model, n_sublayers)
        self._expand, self._reduce = expand_reduce(self.n_streams)

    def check(self) -> None:
        c = self.cfg
        if self.n_streams < 1:
            raise UserError(f"{self.spec.name}: n_streams must be >= 1, got {self.n_streams}")
        if c.fixed or c.mode != "dynamic":
            raise UserError(f"{self.spec.name}: the peer has no fixed-mapping ablation or static mode "
                            f"(variant.fixed={c.fixed!r}, variant.mode={c.mode!r})")

    def peer_kwargs(self, index: int) -> dict:
        kwargs = dict(dim=self.d_model, layer_index=index)
        if self.spec.counterpart == "mhc":
            kwargs["sinkhorn_iters"] = self.cfg.sk_iters
        return kwargs

    def make(self, index: int) -> Residual:
        peer = self.cls(self.n_streams, **self.peer_kwargs(index))
        return PeerResidual(self.cfg, self.d_model, self.n_streams, index, self.n_sublayers, peer)

    def expand(self, emb: Tensor) -> Tensor:
        """Embedding (B, T, C) -> n copies in the peer's layout (B n, T, C)."""
        return self._expand(emb)

    def reduce(self, x: Tensor) -> Tensor:
        """Peer streams (B n, T, C) -> their sum (B, T, C), as our reduce."""
        return self._reduce(x)

    def note(self) -> str:
        """One line for the bench table: what ran, with which arguments, and what differs from ours."""
        args = ", ".join(f"{k}={v}" for k, v in self.peer_kwargs(0).items() if k not in ("dim", "layer_index"))
        return (f"{PACKAGE} {self.version} {self.spec.cls_name}(num_residual_streams={self.n_streams}"
                f"{', ' + args if args else ''}); vs our {self.spec.counterpart}: {self.spec.differs}")


def build_peer(name: str, cfg: VariantConfig, d_model: int, n_sublayers: int) -> PeerVariant:
    """The peer called `name` (a key of PEERS); PeerUnavailable if the package cannot provide it."""
    if name not in PEERS:
        raise UserError(f"unknown peer {name!r}{did_you_mean(name, PEERS)}; choose from {', '.join(PEERS)}")
    return PeerVariant(PEERS[name], cfg, d_model, n_sublayers)
