"""PyTorch references for tests/parity.rs.

    parity.py encoder CHECKPOINT INPUTS OUT [channels_last]   # torchvision ResNet18/34 on INPUTS["x"]
    parity.py mil CHECKPOINT INPUTS OUT       # attention-MIL head on INPUTS["maps"]

CHECKPOINT is one of our .safetensors files; its manifest (``__metadata__["amlmil"]``)
says which architecture to build. Weights are loaded with ``strict=True``, so a
renamed or missing tensor fails here. Outputs are written as safetensors.
"""
import json
import sys

import torch
import torch.nn as nn
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def manifest(path):
    with safe_open(path, "pt") as f:
        return json.loads(f.metadata()["amlmil"])


def encoder(ckpt, inputs, out, layout="contiguous"):
    m = manifest(ckpt)
    assert m["kind"] == "encoder", m["kind"]
    model = getattr(torchvision.models, m["architecture"])(weights=None)
    model.fc = nn.Identity()
    model.load_state_dict(load_file(ckpt), strict=True)
    model.eval()
    x = load_file(inputs)["x"]
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        trunk = nn.Sequential(*list(model.children())[:-2])  # up to layer4
        fmap = trunk(x)
        pooled = model(x)
    save_file({"feature_map": fmap.contiguous(), "pooled": pooled.contiguous()}, out)


class AttentionMil(nn.Module):
    """The attention-MIL head as DESIGN.md §2 and SCEMILA's AMiL describe it."""

    def __init__(self, cfg):
        super().__init__()
        k, cin = cfg["instance_dim"], cfg["in_channels"]
        net = cfg["cell_net"]
        if net["type"] == "four_conv":
            c1, c2, c3 = net["channels"]
            self.g = nn.Sequential(
                nn.Conv2d(cin, c1, 2), nn.ReLU(), nn.Conv2d(c1, c2, 2), nn.ReLU(),
                nn.Conv2d(c2, c3, 2), nn.ReLU(), nn.Conv2d(c3, k, 2), nn.ReLU(), nn.Flatten())
        elif net["type"] == "scemila":
            self.g = nn.Sequential(
                nn.Conv2d(cin, 768, 2), nn.ReLU(), nn.Conv2d(768, 1024, 2), nn.ReLU(),
                nn.AdaptiveMaxPool2d((1, 1)), nn.Flatten(), nn.Linear(1024, k), nn.ReLU())
        else:
            self.g = nn.Sequential(nn.Linear(cin, k), nn.ReLU())
        self.pooled = net["type"] == "pooled"
        c = cfg["num_classes"]
        self.attention = nn.Sequential(nn.Linear(k, cfg["attention_dim"]), nn.Tanh(), nn.Linear(cfg["attention_dim"], c))
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Linear(k, cfg["classifier_dim"]), nn.ReLU(), nn.Linear(cfg["classifier_dim"], 1))
            for _ in range(c))

    def forward(self, maps):
        if self.pooled:
            maps = maps.mean(dim=(2, 3))
        z = self.g(maps)                                   # [N, k']
        att_raw = self.attention(z).transpose(0, 1)        # [C, N]
        att = torch.softmax(att_raw, dim=1)
        bag = att @ z                                      # [C, k']
        logits = torch.cat([clf(bag[c]) for c, clf in enumerate(self.classifiers)])
        return logits, torch.softmax(logits, 0), att_raw, att


def mil(ckpt, inputs, out):
    m = manifest(ckpt)
    assert m["kind"] == "mil", m["kind"]
    model = AttentionMil(m["config"])
    model.load_state_dict(load_file(ckpt), strict=True)
    model.eval()
    maps = load_file(inputs)["maps"]
    with torch.inference_mode():
        logits, probs, att_raw, att = model(maps)
    save_file({"logits": logits, "probabilities": probs, "attention_raw": att_raw.contiguous(),
               "attention": att.contiguous()}, out)


if __name__ == "__main__":
    torch.set_num_threads(2)
    {"encoder": encoder, "mil": mil}[sys.argv[1]](*sys.argv[2:])
