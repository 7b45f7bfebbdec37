"""lora.Adapter: a LoRA adapter for one model (lora_adapter)."""
from __future__ import annotations

import os
from ctypes import byref, c_float, sizeof

from . import _capi as C
from ._convert import cpath, cstring, flag, int32, int32_array, real, uint64
from ._owner import Owner
from .errors import file_not_found
from .model import Model, gguf_type

_INITS = {
    "default": C.LORA_INIT_DEFAULT,    # PEFT's default: A kaiming-uniform, B zeros
    "kaiming": C.LORA_INIT_DEFAULT,
    "gaussian": C.LORA_INIT_GAUSSIAN,  # A ~ N(0, 1/r^2), B zeros
    "random": C.LORA_INIT_RANDOM,      # A and B random (not a no-op; for tests)
    "pissa": C.LORA_INIT_PISSA,        # principal singular triplets; the model's weights become the residual
    "olora": C.LORA_INIT_OLORA,        # QR of the base weights; the model's weights become the residual
}


def _init_value(init) -> int:
    if init is True:
        return C.LORA_INIT_DEFAULT
    if isinstance(init, str):
        try:
            return _INITS[init.lower()]
        except KeyError:
            raise ValueError(f"init must be one of {sorted(_INITS)}, got {init!r}") from None
    if isinstance(init, int) and not isinstance(init, bool):
        return int32(init, "init")   # a LORA_INIT_* value; the library checks it
    raise ValueError(f"init must be 'default', 'gaussian' or 'random', got {init!r}")


class Adapter(Owner):
    """A LoRA adapter for a model's shape. Create with :meth:`create` or :meth:`load`.

    The adapter keeps its model alive; closing the model closes the adapter.
    Closing an attached adapter detaches it. Closing an adapter closes its trainers.
    """

    _kind = "Adapter"
    _close_rank = 1

    def __init__(self, handle, model: Model):
        if not isinstance(handle, C.lora_adapter_p) or not handle:
            raise TypeError("use lora.Adapter.create(model, ...) or lora.Adapter.load(model, path)")
        super().__init__(handle, C.lora_adapter_free)
        self.model = model     # an adapter must not outlive its model
        model._dependents.add(self)

    @staticmethod
    def _model_handle(model):
        if not isinstance(model, Model):
            raise TypeError(f"expected a lora.Model, got {type(model).__name__}")
        return model._require()

    @classmethod
    def create(cls, model: Model, r: int | None = None, alpha: float | None = None, dropout: float | None = None,
               target_modules=None, use_rslora: bool = False, init="default", seed: int | None = None,
               layers_to_transform=None, pissa_niter: int = 0, use_dora: bool = False,
               modules_to_save=None, lora_bias: bool = False) -> "Adapter":
        """A new adapter for model's shape (not attached).

        Arguments left at None take the library's defaults
        (lora_adapter_default_params, PEFT's LoraConfig: r 8, alpha 8,
        dropout 0, target_modules c_attn).

        target_modules: a list of module names or suffixes matched as PEFT does
        ("c_attn", "attn.c_proj", "mlp.c_fc", ...), or a single string taken as
        a full-match regular expression (PEFT's meaning of a string).
        init: "default" (A kaiming-uniform, B zeros), "gaussian", "random",
        "pissa" or "olora" (these two replace the model's base weights by the
        residual; pissa_niter > 0 uses PEFT's fast randomised SVD).
        layers_to_transform: None (every layer), an int or a list of layer indices.
        use_dora: DoRA (PEFT's use_dora): a magnitude per output feature, trained
        with A and B, starting at the base weight's column norms.
        modules_to_save: module names trained in full beside the adapter and saved
        with it (PEFT's modules_to_save: LayerNorms "ln_f", "ln_1", "h.1.ln_2", ...).
        lora_bias: PEFT's lora_bias: B has a bias, added as scale·s·b, trained with A
        and B and merged into the module's bias; starts at zero (init "random": random).
        """
        mh = cls._model_handle(model)
        p = C.lora_adapter_params()
        C.lora_adapter_default_params_v2(byref(p), sizeof(p))
        if r is not None:
            p.r = int32(r, "r")
        if alpha is not None:
            p.lora_alpha = real(alpha, "alpha")
        if dropout is not None:
            p.lora_dropout = real(dropout, "dropout")
        if target_modules is None:
            targets = None   # the library's default (c_attn)
        elif isinstance(target_modules, (str, bytes)):
            targets = cstring(target_modules, "target_modules")
            p.target_modules_regex = 1
        else:
            names = [cstring(t, "target module") for t in target_modules]
            for t in names:
                if b"," in t:
                    raise ValueError(f"target module name {t.decode()!r} contains a comma")
            targets = b",".join(names)
            p.target_modules_regex = 0
        p.target_modules = targets
        p.use_rslora = flag(use_rslora)
        p.use_dora = flag(use_dora)
        p.lora_bias = flag(lora_bias)
        saved = None
        if modules_to_save is not None:
            if isinstance(modules_to_save, (str, bytes)):
                modules_to_save = [modules_to_save]
            names = [cstring(t, "modules_to_save entry") for t in modules_to_save]
            for t in names:
                if b"," in t:
                    raise ValueError(f"modules_to_save entry {t.decode()!r} contains a comma")
            saved = b",".join(names)
        p.modules_to_save = saved
        p.init = _init_value(init)
        if seed is not None:
            p.seed = uint64(seed, "seed")
        p.pissa_niter = int32(pissa_niter, "pissa_niter")
        layers = None
        if layers_to_transform is not None:
            if isinstance(layers_to_transform, int):
                layers_to_transform = [layers_to_transform]
            layers, n = int32_array(layers_to_transform, "layers_to_transform")
            p.layers_to_transform = layers
            p.n_layers_to_transform = n
        h = C.lora_adapter_p()
        C.lora_adapter_create(byref(h), mh, byref(p))
        del layers, targets, saved
        return cls(h, model)

    @classmethod
    def load(cls, model: Model, path) -> "Adapter":
        """Loads a PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
        A missing path raises FileNotFoundError."""
        mh = cls._model_handle(model)
        if not os.path.exists(cpath(path)):
            raise file_not_found(path, "adapter directory", "lora_adapter_load")
        h = C.lora_adapter_p()
        C.lora_adapter_load(byref(h), mh, cpath(path))
        return cls(h, model)

    @staticmethod
    def _rank_args(rank, energy):
        if (rank is None) == (energy is None):
            raise ValueError("give exactly one of rank and energy")
        return (int32(rank, "rank"), 0.0) if rank is not None else (0, real(energy, "energy"))

    def compress(self, rank=None, energy=None):
        """The optimal lower-rank adapter (per module: rank, or the smallest rank
        keeping `energy` of the delta). Returns (adapter, max_relative_error)."""
        r, e = self._rank_args(rank, energy)
        h = C.lora_adapter_p()
        err = c_float()
        C.lora_adapter_compress(byref(h), self._require(), r, e, byref(err))
        return Adapter(h, self.model), float(err.value)

    @classmethod
    def combine(cls, adapters, weights, method="svd", svd_rank=None, svd_clamp=None, density=None,
                majority_sign_method=None, seed=None) -> "Adapter":
        """PEFT's add_weighted_adapter. method: "cat", "linear", "svd", "ties",
        "dare_linear", "dare_ties", "magnitude_prune", or one of the last four
        with "_svd". The task merges need `density` in (0, 1];
        majority_sign_method "total" (default) or "frequency"; `seed` seeds
        DARE's masks. None keeps the library's default (lora_combine_default_params)."""
        adapters = list(adapters)
        weights = [real(w, "weight") for w in weights]
        if not adapters or len(adapters) != len(weights):
            raise ValueError("give as many weights as adapters (at least one)")
        methods = {"cat": C.LORA_COMBINE_CAT, "linear": C.LORA_COMBINE_LINEAR, "svd": C.LORA_COMBINE_SVD,
                   "ties": C.LORA_COMBINE_TIES, "dare_linear": C.LORA_COMBINE_DARE_LINEAR,
                   "dare_ties": C.LORA_COMBINE_DARE_TIES, "magnitude_prune": C.LORA_COMBINE_MAGNITUDE_PRUNE,
                   "ties_svd": C.LORA_COMBINE_TIES_SVD, "dare_linear_svd": C.LORA_COMBINE_DARE_LINEAR_SVD,
                   "dare_ties_svd": C.LORA_COMBINE_DARE_TIES_SVD,
                   "magnitude_prune_svd": C.LORA_COMBINE_MAGNITUDE_PRUNE_SVD}
        if method not in methods:
            raise ValueError(f"method must be one of {sorted(methods)}")
        signs = {"total": C.LORA_MAJORITY_SIGN_TOTAL, "frequency": C.LORA_MAJORITY_SIGN_FREQUENCY}
        p = C.lora_combine_params()
        C.lora_combine_default_params_v2(byref(p), sizeof(p))
        p.method = methods[method]
        if svd_rank is not None:
            p.svd_rank = int32(svd_rank, "svd_rank")
        if svd_clamp is not None:
            p.svd_clamp = real(svd_clamp, "svd_clamp")
        if density is not None:
            p.density = real(density, "density")
        elif method not in ("cat", "linear", "svd"):
            raise ValueError(f"method {method!r} needs a density in (0, 1]")
        if majority_sign_method is not None:
            if majority_sign_method not in signs:
                raise ValueError(f"majority_sign_method must be one of {sorted(signs)}")
            p.majority_sign_method = signs[majority_sign_method]
        if seed is not None:
            p.seed = uint64(seed, "seed")
        handles = (C.lora_adapter_p * len(adapters))(*[a._require() for a in adapters])
        ws = (c_float * len(weights))(*weights)
        h = C.lora_adapter_p()
        C.lora_adapter_combine_v2(byref(h), handles, ws, len(adapters), byref(p))
        return cls(h, adapters[0].model)

    @classmethod
    def extract(cls, base: Model, tuned: Model, target_modules=("c_attn",), rank=None, energy=None,
                lora_bias: bool = False):
        """A LoRA adapter approximating tuned − base (SVD per module); with lora_bias, it also carries
        each module's bias change (PEFT's lora_bias). Returns (adapter, max_relative_error)."""
        r, e = cls._rank_args(rank, energy)
        names = b",".join(cstring(t, "target module") for t in target_modules)
        h = C.lora_adapter_p()
        err = c_float()
        C.lora_adapter_extract_v2(byref(h), cls._model_handle(base), cls._model_handle(tuned), names, r, e,
                                  flag(lora_bias), byref(err))
        return cls(h, base), float(err.value)

    def convert_for_original_base(self) -> "Adapter":
        """A PiSSA/OLoRA adapter as a plain rank-2r LoRA for the unmodified base (to save)."""
        h = C.lora_adapter_p()
        C.lora_adapter_convert_for_original_base(byref(h), self._require())
        return Adapter(h, self.model)

    def save(self, path) -> None:
        """Saves in PEFT's layout into directory path (created if needed)."""
        C.lora_adapter_save(self._require(), cpath(path))

    def export_gguf(self, path, dtype: str = "f32") -> None:
        """Writes a GGUF LoRA for llama.cpp (--lora FILE) for the model this adapter
        belongs to; dtype "f32" or "f16"."""
        C.lora_adapter_export_gguf(self._require(), cpath(path), gguf_type(dtype))

    @classmethod
    def from_pretrained(cls, model: Model, path) -> "Adapter":
        """PEFT's name for :meth:`load`."""
        return cls.load(model, path)

    def save_pretrained(self, path) -> None:
        """PEFT's name for :meth:`save`."""
        self.save(path)

    @property
    def n_params(self) -> int:
        """Trainable parameter count (A and B of every adapted module)."""
        return int(C.lora_adapter_n_params(self._require()))

    @property
    def attached(self) -> bool:
        return not self.closed and self in self.model._attached

    def _on_close(self) -> None:
        # lora_adapter_free detaches an attached adapter from its (live) model.
        self.model._attached.discard(self)
        self.model._dependents.discard(self)

    def __repr__(self) -> str:
        if self.closed:
            return "<lora.Adapter (closed)>"
        return f"<lora.Adapter n_params={self.n_params}{' attached' if self.attached else ''}>"
