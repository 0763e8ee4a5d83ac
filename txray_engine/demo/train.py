"""Training loops of the pipeline: the LSTM language model (checkpoint and validation perplexity
every epoch) and the fine-tuned classifier (accuracy)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models import LSTMClassifier, LSTMLanguageModel
from .data import Docs


def _stream(docs: Docs, eos: int) -> torch.Tensor:
    return torch.tensor([i for d in docs.ids for i in (*d, eos)], dtype=torch.long)


def _batchify(stream: torch.Tensor, batch: int) -> torch.Tensor:
    n = stream.numel() // batch
    return stream[: n * batch].view(batch, n)


@torch.no_grad()
def perplexity(model: LSTMLanguageModel, docs: Docs, eos: int, bptt: int, batch: int,
               device="cpu") -> float:
    model.eval()
    data = _batchify(_stream(docs, eos), batch).to(device)
    total, count = 0.0, 0
    for i in range(0, data.shape[1] - 1, bptt):
        x, y = data[:, i:i + bptt], data[:, i + 1:i + 1 + bptt]
        x = x[:, : y.shape[1]]
        loss = F.cross_entropy(model(x).reshape(-1, model.config["vocab_size"]), y.reshape(-1),
                               reduction="sum")
        total += float(loss)
        count += y.numel()
    return math.exp(total / max(count, 1))


def train_lm(cfg, vocab_size: int, train: Docs, valid: Docs, eos: int, ckpt_dir: Path,
             device="cpu", log: Callable = print, quiet: bool = False
             ) -> tuple[LSTMLanguageModel, list[dict]]:
    """Train for ``cfg.lm_epochs``; after every epoch save ``lm-epochN.pt`` and log perplexity."""
    model = LSTMLanguageModel(vocab_size, cfg.emb_dim, cfg.hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lm_lr)
    data = _batchify(_stream(train, eos), cfg.lm_batch).to(device)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    history = [{"epoch": 0, "valid_ppl": perplexity(model, valid, eos, cfg.bptt, cfg.lm_batch,
                                                    device)}]
    for epoch in range(1, cfg.lm_epochs + 1):
        model.train()
        steps = range(0, data.shape[1] - 1, cfg.bptt)
        bar = tqdm(steps, desc=f"epoch {epoch}/{cfg.lm_epochs}", unit="tok",
                   unit_scale=cfg.bptt * cfg.lm_batch, disable=quiet, leave=False,
                   dynamic_ncols=True)
        for i in bar:
            x, y = data[:, i:i + cfg.bptt], data[:, i + 1:i + 1 + cfg.bptt]
            x = x[:, : y.shape[1]]
            loss = F.cross_entropy(model(x).reshape(-1, vocab_size), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
        ppl = perplexity(model, valid, eos, cfg.bptt, cfg.lm_batch, device)
        torch.save(model, ckpt_dir / f"lm-epoch{epoch}.pt")  # whole module: `txray` loads it
        history.append({"epoch": epoch, "valid_ppl": ppl})
        log(f"  language model epoch {epoch}/{cfg.lm_epochs}: validation perplexity {ppl:.1f}")
    return model, history


def review_batches(docs: Docs, batch: int, pad: int, shuffle_seed: int | None = None):
    """Padded ``(ids, mask, labels, pos)`` batches (pos padded with -1)."""
    order = list(range(len(docs)))
    if shuffle_seed is not None:
        g = torch.Generator().manual_seed(shuffle_seed)
        order = torch.randperm(len(docs), generator=g).tolist()
    for s in range(0, len(order), batch):
        idx = [i for i in order[s:s + batch] if docs.ids[i]]
        if not idx:
            continue
        t = max(len(docs.ids[i]) for i in idx)
        ids = torch.full((len(idx), t), pad, dtype=torch.long)
        pos = torch.full((len(idx), t), -1, dtype=torch.long)
        mask = torch.zeros((len(idx), t), dtype=torch.bool)
        for r, i in enumerate(idx):
            n = len(docs.ids[i])
            ids[r, :n] = torch.tensor(docs.ids[i])
            pos[r, :n] = torch.tensor(docs.pos[i])
            mask[r, :n] = True
        labels = torch.tensor([docs.labels[i] for i in idx]) if docs.labels is not None else None
        yield ids, mask, labels, pos


@torch.no_grad()
def accuracy(model: LSTMClassifier, docs: Docs, batch: int, pad: int, device="cpu") -> float:
    model.eval()
    right = total = 0
    for ids, mask, labels, _ in review_batches(docs, batch, pad):
        pred = model(ids.to(device), mask.to(device)).argmax(-1).cpu()
        right += int((pred == labels).sum())
        total += labels.numel()
    return right / max(total, 1)


def finetune(cfg, lm: LSTMLanguageModel, n_labels: int, train: Docs, valid: Docs, pad: int,
             seed: int, device="cpu") -> tuple[LSTMClassifier, dict]:
    """Fine-tune encoder and head on the labelled reviews; keep the best validation epoch."""
    torch.manual_seed(seed)
    model = LSTMClassifier.from_language_model(lm, n_labels).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.clf_lr)
    best, best_state, history = -1.0, None, []
    for epoch in range(1, cfg.clf_epochs + 1):
        model.train()
        for ids, mask, labels, _ in review_batches(train, cfg.clf_batch, pad, seed * 1000 + epoch):
            loss = F.cross_entropy(model(ids.to(device), mask.to(device)), labels.to(device))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        acc = accuracy(model, valid, cfg.clf_batch, pad, device)
        history.append({"epoch": epoch, "valid_accuracy": acc})
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), {"seed": seed, "history": history, "valid_accuracy": best}
