"""Top examples: each neuron's ``m`` strongest activations over the stream, with where they
occurred (document, position) and the input tokens around them, for reports.

Mergeable like the sums: the top-m of a union is the top-m of the two top-m lists. Among equal
values an example already kept (earlier batches, or the first state of a merge) stays; inside one
batch torch.topk decides.
"""

from __future__ import annotations

import torch


class TopExamples:
    """Running top-``m`` per neuron: ``value [N, m]`` (raw activation, ``-inf`` = empty slot),
    ``doc``, ``pos`` ``[N, m]`` and ``context [N, m, W]`` (token ids, ``-1`` outside the text)."""

    def __init__(self, n_neurons: int, m: int, width: int, device="cpu"):
        self.m, self.width = int(m), int(width)
        self.value = torch.full((n_neurons, m), -torch.inf, device=device)
        self.doc = torch.full((n_neurons, m), -1, dtype=torch.long, device=device)
        self.pos = torch.full((n_neurons, m), -1, dtype=torch.long, device=device)
        self.context = torch.full((n_neurons, m, width), -1, dtype=torch.long, device=device)

    def _keep_best(self, value, doc, pos, context) -> None:
        order = torch.sort(value, dim=1, descending=True, stable=True).indices[:, : self.m]
        self.value = torch.gather(value, 1, order)
        self.doc = torch.gather(doc, 1, order)
        self.pos = torch.gather(pos, 1, order)
        self.context = torch.gather(context, 1, order.unsqueeze(-1).expand(-1, -1, self.width))

    def update(self, acts: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor,
               context: torch.Tensor) -> None:
        """Offer positions ``acts [P, N]`` with ``doc``, ``pos`` ``[P]`` and ``context [P, W]``."""
        if acts.shape[0] == 0:
            return
        mm = min(self.m, acts.shape[0])
        v, i = torch.topk(acts.float(), mm, dim=0)  # [mm, N]: this batch's best per neuron
        v, i = v.t(), i.t()
        self._keep_best(torch.cat([self.value, v], 1), torch.cat([self.doc, doc[i]], 1),
                        torch.cat([self.pos, pos[i]], 1),
                        torch.cat([self.context, context[i]], 1))

    def merge_(self, other: "TopExamples") -> "TopExamples":
        if (other.m, other.width) != (self.m, self.width):
            raise ValueError("cannot merge top examples of different sizes")
        self._keep_best(torch.cat([self.value, other.value], 1),
                        torch.cat([self.doc, other.doc], 1), torch.cat([self.pos, other.pos], 1),
                        torch.cat([self.context, other.context], 1))
        return self

    def arrays(self) -> dict:
        return {key: t.cpu().numpy().copy() for key, t in  # a snapshot, not a view
                (("examples_value", self.value), ("examples_doc", self.doc),
                 ("examples_pos", self.pos), ("examples_context", self.context))}

    @classmethod
    def from_arrays(cls, arrays: dict, device="cpu") -> "TopExamples":
        value = torch.from_numpy(arrays["examples_value"])
        ex = cls(value.shape[0], value.shape[1], arrays["examples_context"].shape[2], device)
        ex.value = value.to(device)
        ex.doc = torch.from_numpy(arrays["examples_doc"]).to(device)
        ex.pos = torch.from_numpy(arrays["examples_pos"]).to(device)
        ex.context = torch.from_numpy(arrays["examples_context"]).to(device)
        return ex


def context_windows(input_ids: torch.Tensor, mask: torch.Tensor | None, radius: int) -> torch.Tensor:
    """``[B, T, 2r+1]`` token ids around every position of ``input_ids [B, T]`` (``-1`` beyond the
    sequence or on padding)."""
    ids = input_ids.long()
    if mask is not None:
        ids = ids.masked_fill(~mask.bool(), -1)
    padded = torch.nn.functional.pad(ids, (radius, radius), value=-1)
    return padded.unfold(1, 2 * radius + 1, 1)
