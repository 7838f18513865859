"""Read and write Qwen3 weights in the Hugging Face checkpoint format (safetensors only).

``load_pretrained`` builds the model on the meta device (no memory), then reads each tensor from
the memory-mapped safetensors file(s), converts it to the requested dtype/device and assigns it,
so the weights are never held twice. Loading is strict: every checkpoint tensor must be used and
every parameter filled, with matching shapes; errors name the key. Pickle files are never read.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import Qwen3Config
from .files import atomic_folder, write_text
from .model import Qwen3ForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that does not match its config (names the file and the key)."""


def resolve_model_dir(name_or_dir: str | os.PathLike, download: bool = False) -> Path:
    """A local model folder for a path or a hub id, without touching the network by default.

    A hub id (``Qwen/Qwen3-0.6B``) is looked up in the local huggingface_hub cache. If it is not
    there, this fails at once with instructions, unless ``download=True`` asks to fetch it.
    """
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not is_hub_id(str(name_or_dir)):
        raise FileNotFoundError(f"model directory not found: {name_or_dir}")
    return resolve_hub_id(str(name_or_dir), download)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hugging Face repository id (``org/name``)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


def resolve_hub_id(name: str, download: bool = False) -> Path:
    """The local snapshot folder of hub repository ``name``: from the cache, or fetched with ``download``."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.txt"]
    try:
        return Path(snapshot_download(name, local_files_only=True, allow_patterns=patterns))
    except Exception as cached_error:  # not cached (LocalEntryNotFoundError), or a bad id
        if not download:
            raise FileNotFoundError(
                f"{name} is not in the local Hugging Face cache, and nothing is downloaded unless asked for.\n"
                f"Pass a local directory that holds config.json and *.safetensors instead, e.g.\n"
                f"  hf download {name} --local-dir ./{name.split('/')[-1]}\n"
                f"then use ./{name.split('/')[-1]}; or allow downloads explicitly (download=True here; "
                f"vcap: --allow-downloads)."
            ) from cached_error
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:  # no network, an unknown repository, a gated model
        raise FileNotFoundError(f"could not download {name} from the Hugging Face hub: {e}") from e


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file; a missing or unreadable file is a CheckpointError naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike,
                      hint: str = "") -> None:
    """Load ``state`` into ``module``: every key and every shape must match, or a CheckpointError
    names ``source`` and the first bad key (``hint`` says what may be wrong)."""
    own = module.state_dict()
    problem = next((f"missing weight {k!r}" for k in own if k not in state), None)
    problem = problem or next((f"unexpected weight {k!r}" for k in state if k not in own), None)
    problem = problem or next((f"weight {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
                               for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)), None)
    if problem:
        raise CheckpointError(f"{source}: {problem}" + (f" ({hint})" if hint else ""))
    module.load_state_dict(state, strict=True)


@contextlib.contextmanager
def _open_safetensors(path: Path) -> Iterator:
    """safetensors' reader for ``path``; a missing or damaged file is a CheckpointError naming it."""
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except Exception as e:  # SafetensorError: a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    with handle as f:
        yield f


def _checkpoint_files(model_dir: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file that holds it."""
    index = model_dir / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / SINGLE_FILE
    if single.exists():
        with _open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise CheckpointError(f"{model_dir}: only pickle weights (*.bin/*.pt) found; vcap loads safetensors only")
    raise CheckpointError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}")


def load_pretrained(
    name_or_dir: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    download: bool = False,
    load_in_4bit: bool = False,
) -> Qwen3ForCausalLM:
    """Load a Qwen3 / Qwen3-MoE checkpoint (a local HF model folder or a cached hub id).

    The folder holds ``config.json`` and ``model.safetensors`` or sharded ``model-*.safetensors``
    with ``model.safetensors.index.json``. With ``tie_word_embeddings`` and no ``lm_head.weight``
    the head shares the embedding matrix. The model is built on the meta device and each tensor is
    read, converted and placed one at a time, so memory holds the loaded model plus one tensor.

    ``load_in_4bit``: the decoder layers' linear weights become NF4 with double quantization
    (bitsandbytes), each quantized as it is read, computing in ``dtype``; the model never exists
    in full precision (see qwen3_backbone.quantize). Returns the model in eval mode.
    """
    model_dir = resolve_model_dir(name_or_dir, download=download)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    config = Qwen3Config.from_hf(model_dir / "config.json")
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    quantized: set[str] = set()
    if load_in_4bit:
        from .quantize import swap_to_linear4bit

        quantized = {f"{name}.weight" for name in swap_to_linear4bit(model, compute_dtype=dtype)}
    state: dict[str, torch.Tensor] = {}
    quantized_bytes = 0
    for name, tensor in read_checkpoint(model_dir, shapes, skip=("lm_head.weight",) if config.tie_word_embeddings else ()):
        if name in quantized:
            from .quantize import quantized_weight

            module = model.get_submodule(name.removesuffix(".weight"))
            module.weight = quantized_weight(tensor.to(dtype), module, device)
            quantized_bytes += tensor.numel() * tensor.element_size()
            if quantized_bytes >= REOPEN_BYTES:  # keep the build's peak near the 4-bit model's size
                release_freed_memory()
                quantized_bytes = 0
        else:
            # A bf16 load keeps bf16 tensors memory-mapped from the file (no copy): a page is read
            # when it is used (an embedding row when its token comes). The 4-bit build does so for
            # the large tensors, which have a mapping of their own (see _chunks), and copies the
            # small ones, so that the mappings the quantized weights were read through are closed.
            small = tensor.numel() * tensor.element_size() < REOPEN_BYTES
            state[name] = tensor.to(device=device, dtype=dtype, copy=load_in_4bit and small)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=not quantized, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers (RoPE frequencies) were built on the CPU; keep them in fp32 on the target device.
    model.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq.to(device)
    if quantized:
        release_freed_memory()
    return model.eval()


def release_freed_memory() -> None:
    """Hand the C heap's freed pages back to the operating system (glibc only; a no-op elsewhere).
    Quantizing tensor by tensor frees many short-lived buffers between the ones it keeps; glibc
    keeps those pages, so without this the process stays about 1.7x the 4-bit model in size."""
    if os.name != "posix":
        return
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        return
    trim(0)


def read_checkpoint(model_dir: Path, shapes: dict[str, tuple[int, ...]],
                    skip: tuple[str, ...] = ()) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor a model of these parameter ``shapes`` needs, read one at a time from the
    folder's safetensors file or shards. Strict: an unexpected, missing (unless in ``skip``) or
    misshapen tensor is a CheckpointError naming the file and the key."""
    files = _checkpoint_files(model_dir)
    unexpected = sorted(set(files) - set(shapes))
    if unexpected:
        raise CheckpointError(
            f"{model_dir}: unexpected tensor {unexpected[0]!r} in the checkpoint"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + " that the config does not describe"
        )
    needed = [n for n in shapes if n not in skip]
    missing = [n for n in needed if n not in files]
    if missing:
        raise CheckpointError(
            f"{model_dir}: missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    by_file: dict[Path, list[str]] = {}
    for name in needed:
        by_file.setdefault(files[name], []).append(name)
    for file, names in by_file.items():
        for chunk in _chunks(file, names):
            with _open_safetensors(file) as f:
                for name in chunk:
                    tensor = f.get_tensor(name)  # memory-mapped: pages are read as they are touched
                    if tuple(tensor.shape) != shapes[name]:
                        raise CheckpointError(f"{file.name}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                              f"the config expects {shapes[name]}")
                    yield name, tensor


REOPEN_BYTES = 256 * 1024**2


def _chunks(file: Path, names: list[str]) -> Iterator[list[str]]:
    """``names`` in runs of about REOPEN_BYTES of data. Each run is read through its own mapping of
    the file, so the pages of tensors that were converted and dropped (quantized, cast, copied to a
    GPU) leave resident memory when the run ends instead of when the whole shard is done. A tensor
    of REOPEN_BYTES or more is a run of its own: kept memory-mapped, it holds no other's pages."""
    with _open_safetensors(file) as f:
        sizes = {name: _nbytes(f.get_slice(name)) for name in names}
    chunk, size = [], 0
    for name in names:
        if sizes[name] >= REOPEN_BYTES and chunk:
            yield chunk
            chunk, size = [], 0
        chunk.append(name)
        size += sizes[name]
        if size >= REOPEN_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def _nbytes(view) -> int:
    """The data size of a tensor in a safetensors file, from its header entry (8-bit types: 1)."""
    return math.prod(view.get_shape()) * _ITEMSIZE.get(view.get_dtype(), 1)


def load_weights_into(model: Qwen3ForCausalLM, model_dir: str | os.PathLike) -> None:
    """Copy a checkpoint folder's weights (one file or shards) into ``model``'s parameters, in their
    dtype and device, one tensor at a time: how a training run's full-stage checkpoint is resumed
    or started from."""
    params = dict(model.named_parameters(remove_duplicate=False))
    skip = ("lm_head.weight",) if model.config.tie_word_embeddings else ()
    with torch.no_grad():
        for name, tensor in read_checkpoint(Path(model_dir), {n: tuple(p.shape) for n, p in params.items()}, skip):
            params[name].copy_(tensor)


def save_pretrained(
    model: Qwen3ForCausalLM, out_dir: str | os.PathLike, max_shard_bytes: int = 5 * 1024**3, overwrite: bool = False
) -> Path:
    """Write ``config.json`` and safetensors weights that transformers' ``from_pretrained`` reads.

    Large models are sharded (``model-00001-of-0000N.safetensors`` + index). The folder is written
    next to its destination and renamed into place, so an interrupted save leaves no partial copy.
    An ``out_dir`` that exists and is not empty is replaced only with ``overwrite=True``.
    """
    out = Path(out_dir)
    config = model.config
    state = {
        name: (t.to_dense() if t.is_mkldnn else t).detach().to("cpu").contiguous()
        for name, t in model.state_dict().items()
        if not (config.tie_word_embeddings and name == "lm_head.weight")
    }
    dtype = next(iter(state.values())).dtype
    hf_config = config.to_hf()
    hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")

    with atomic_folder(out, replace=overwrite) as tmp:
        write_text(tmp / "config.json", json.dumps(hf_config, indent=2) + "\n")
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name, tensor in state.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = tensor
            size += nbytes
        metadata = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], str(tmp / SINGLE_FILE), metadata=metadata)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / file), metadata=metadata)
                weight_map.update({name: file for name in shard})
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            write_text(tmp / INDEX_FILE, json.dumps(index, indent=2) + "\n")
    return out
