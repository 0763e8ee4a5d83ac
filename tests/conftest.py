import os

# Triton kernels run under the interpreter on CPU; this must precede any kernel import.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def word_model(tmp_path):
    """A tiny word-level LSTM LM saved as a torch checkpoint, its vocabulary and two corpora."""
    from naive import make_word_model
    return make_word_model(tmp_path)


@pytest.fixture
def two_stages(word_model, tmp_path):
    """A store collected through the CLI: stages ``text`` and ``reviews``, streams token and
    predicted (no pos)."""
    from naive import run_cli
    store = tmp_path / "s.zarr"
    base = ["collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"],
            "--layers", "lstm", "--streams", "token,predicted", "--store", store, "-q"]
    run_cli(*base, "--corpus", word_model["text"], "--stage", "text")
    run_cli(*base, "--corpus", word_model["jsonl"], "--stage", "reviews")
    return store
