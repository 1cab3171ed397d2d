"""Test helper: a tiny adapter trained in-process in seconds (the exporter's and the runtime's fixtures)."""
from pathlib import Path

import torch


def train_tiny_adapter(backbone, data: Path, out: Path, seed: int = 0, steps: int = 125) -> Path:
    from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
    from crome_edge.adapter_file import AdapterMetadata, save_adapter
    from crome_edge.data import load_dataset, split_dataset
    from crome_edge.data.pixels import PixelStore
    from crome_edge.model import CromeModel

    torch.manual_seed(seed)
    train, _ = split_dataset(load_dataset(data).samples, 0.25, 0)
    store = PixelStore.for_backbone(backbone.info)
    store.prepare(train)
    adapter = CromeAdapter(AdapterConfig(backbone.info.d_model, 16))
    model = CromeModel(backbone, adapter)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=2e-2)
    questions, answers = [s.question for s in train], [s.answer for s in train]
    with torch.no_grad():
        visual = model.visual_embeds(store.batch(train), questions)  # frozen: computed once
    for _ in range(steps):
        idx = torch.randint(0, len(train), (16,)).tolist()
        loss = model.loss_from_visual(visual[idx], [questions[i] for i in idx], [answers[i] for i in idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    meta = AdapterMetadata(adapter.config, "tiny", backbone.fingerprint(), backbone.info.prompt,
                           training={"val_fraction": 0.25, "split_seed": 0}, train_data=str(data))
    save_adapter(out, adapter, meta)
    return out
