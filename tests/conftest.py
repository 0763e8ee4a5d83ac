import os
import shutil

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


@pytest.fixture(scope="session")
def two_stages_once(tmp_path_factory):
    """``two_stages``' store, collected once per session (about 2 s a collection)."""
    from naive import make_word_model, run_cli
    word_model = make_word_model(tmp_path_factory.mktemp("two_stages"))
    store = word_model["dir"] / "s.zarr"
    base = ["collect", "--model", word_model["ckpt"], "--vocab", word_model["vocab"],
            "--layers", "lstm", "--streams", "token,predicted", "--store", store, "-q"]
    run_cli(*base, "--corpus", word_model["text"], "--stage", "text")
    run_cli(*base, "--corpus", word_model["jsonl"], "--stage", "reviews")
    return store


@pytest.fixture
def two_stages(two_stages_once, tmp_path):
    """A store collected through the CLI from ``word_model``'s files: stages ``text`` and
    ``reviews``, streams token and predicted (no pos); each test has its own copy."""
    store = tmp_path / "s.zarr"
    shutil.copytree(two_stages_once, store)
    return store
