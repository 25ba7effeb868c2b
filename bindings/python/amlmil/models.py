"""libamlmil checkpoints as PyTorch modules, with the same outputs as the library.

>>> from amlmil.models import load_encoder, load_mil
>>> encoder = load_encoder("encoder.safetensors")   # ResNet trunk or ViT, eval mode
>>> head = load_mil("mil.safetensors")              # AttentionMil, eval mode
>>> out = head(encoder(x))                          # x: [N, 3, S, S], normalised
>>> out["probabilities"], out["attention"]          # [C], [C, N]

Both also load the ``.pth`` state dicts that ``amlmil export`` writes
(:func:`encoder_from_state_dict`, :meth:`AttentionMil.from_state_dict`).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Tuple

import torch
import torch.nn as nn


def content_sha256(path: str) -> Tuple[str, str]:
    """(stored, actual) SHA-256 of a libamlmil file, as ``src/checkpoint.rs`` defines
    it: metadata entries but the checksum, sorted, then tensors by name with
    dtype, shape and bytes. ``stored`` is ``""`` for files written before checksums."""
    import hashlib
    import struct

    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    stored = meta.get("amlmil.sha256", "")
    h = hashlib.sha256()
    for k in sorted(k for k in meta if k != "amlmil.sha256"):
        h.update(k.encode() + b"\0" + meta[k].encode() + b"\0")
    body = data[8 + n :]
    for name in sorted(header):
        t = header[name]
        start, end = t["data_offsets"]
        h.update(name.encode() + f"\0{t['dtype']}\0".encode())
        for d in t["shape"]:
            h.update(struct.pack("<Q", d))
        h.update(struct.pack("<Q", end - start) + body[start:end])
    return stored, h.hexdigest()


def _read_kind(path: str, kind: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """:func:`read_checkpoint`, refusing a checkpoint of the other kind."""
    manifest, tensors = read_checkpoint(path)
    if manifest.get("kind") != kind:
        raise ValueError(f"{path} is a `{manifest.get('kind')}` checkpoint, expected `{kind}`")
    return manifest, tensors


def read_checkpoint(path: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """The manifest (``__metadata__["amlmil"]``) and the tensors of a libamlmil
    checkpoint; refuses a file whose contents do not match its SHA-256."""
    from safetensors import safe_open

    stored, actual = content_sha256(path)
    if stored and stored != actual:
        raise ValueError(f"{path} is corrupt: its contents do not match the SHA-256 written with it")
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        if "amlmil" not in meta:
            raise ValueError(f"{path} has no `amlmil` manifest; it is not a libamlmil checkpoint")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return json.loads(meta["amlmil"]), tensors


class EncoderTrunk(nn.Module):
    """A torchvision ResNet18/34 without pooling and ``fc``: pixels → feature map.

    ``forward(x)`` takes normalised ``[N, 3, S, S]`` inputs and returns the last
    feature map ``[N, 512, ⌈S/32⌉, ⌈S/32⌉]``, as libamlmil's encoder does.
    ``resnet`` is the full torchvision model (``fc`` an identity), so
    ``trunk.resnet(x)`` gives the pooled 512-vector.
    """

    def __init__(self, architecture: str):
        super().__init__()
        import torchvision

        if architecture not in ("resnet18", "resnet34"):
            raise ValueError(f"architecture must be resnet18 or resnet34, got {architecture!r}")
        self.resnet = getattr(torchvision.models, architecture)(weights=None)
        self.resnet.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))


def encoder_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> EncoderTrunk:
    """A trunk for a torchvision-named state dict (``fc`` ignored), ResNet18 or 34 by block count."""
    arch = "resnet34" if "layer3.5.conv1.weight" in state_dict else "resnet18"
    trunk = EncoderTrunk(arch)
    sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    trunk.resnet.load_state_dict(sd, strict=True)
    return trunk.eval()


class _VitBlock(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        d, h, eps = c["embed_dim"], c["mlp_hidden"], c["layer_norm_eps"]
        self.heads = c["num_heads"]
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d)
        self.attn.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = nn.Module()
        self.swiglu = c["ffn"] == "swiglu"
        if self.swiglu:
            self.mlp.w12 = nn.Linear(d, 2 * h)
            self.mlp.w3 = nn.Linear(h, d)
        else:
            self.mlp.fc1 = nn.Linear(d, h)
            self.mlp.fc2 = nn.Linear(h, d)
        if c["layer_scale"]:
            self.ls1, self.ls2 = nn.Module(), nn.Module()
            self.ls1.gamma = nn.Parameter(torch.ones(d))
            self.ls2.gamma = nn.Parameter(torch.ones(d))
        else:
            self.ls1 = self.ls2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        a = self.attn.proj(a.transpose(1, 2).reshape(n, t, d))
        x = x + (a * self.ls1.gamma if self.ls1 is not None else a)
        y = self.norm2(x)
        if self.swiglu:
            x1, x2 = self.mlp.w12(y).chunk(2, dim=-1)
            f = self.mlp.w3(torch.nn.functional.silu(x1) * x2)
        else:
            f = self.mlp.fc2(torch.nn.functional.gelu(self.mlp.fc1(y)))
        return x + (f * self.ls2.gamma if self.ls2 is not None else f)


class VitEncoder(nn.Module):
    """libamlmil's DINOv2-layout vision transformer (``src/model/vit.rs``).

    ``config`` is the ``vit`` object of an encoder manifest. ``forward(x)`` takes
    normalised ``[N, 3, S, S]`` inputs (S a multiple of the patch) and returns
    what the MIL head sees, ``[N, D', 1, 1]``: the final-normed class token, or
    it and the mean patch token (``features = cls_mean``). Parameter names are
    DINOv2's, as in the checkpoint. Position embeddings are resized to other
    grids as the layout does (``pos_resize``: ``dinov2`` or ``timm``);
    :meth:`fix_input_size` computes them once, so an exported graph holds no
    resize.
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        c = dict(config)
        self.config = c
        d, p, g = c["embed_dim"], c["patch_size"], c["pos_grid"]
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g + (1 if c["class_pos"] else 0), d))
        if c["registers"]:
            self.register_tokens = nn.Parameter(torch.zeros(1, c["registers"], d))
        else:
            self.register_tokens = None
        self.blocks = nn.ModuleList(_VitBlock(c) for _ in range(c["depth"]))
        self.norm = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self._fixed_grid = -1
        self.register_buffer("fixed_pos", None, persistent=False)

    def _patch_pos(self, g: int) -> torch.Tensor:
        c = self.config
        m, d = c["pos_grid"], c["embed_dim"]
        pos = self.pos_embed[:, 1:] if c["class_pos"] else self.pos_embed
        if g == m:
            return pos
        grid = pos.float().reshape(1, m, m, d).permute(0, 3, 1, 2)
        f = torch.nn.functional.interpolate
        if c["pos_resize"] == "dinov2":
            s = (g + 0.1) / m
            grid = f(grid, scale_factor=(s, s), mode="bicubic", antialias=False)
        else:
            grid = f(grid, size=(g, g), mode="bicubic", antialias=True)
        return grid.permute(0, 2, 3, 1).reshape(1, g * g, d).to(pos.dtype)

    def fix_input_size(self, size: int) -> "VitEncoder":
        """Resizes the position embeddings for ``size`` px inputs once."""
        with torch.no_grad():
            g = size // self.config["patch_size"]
            self.fixed_pos = self._patch_pos(g).detach().clone()
            self._fixed_grid = g
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        p = self.patch_embed.proj(x)
        n, d, g = p.shape[0], p.shape[1], p.shape[-1]
        patches = p.flatten(2).transpose(1, 2)
        pos = self.fixed_pos if self._fixed_grid == g else self._patch_pos(g)
        cls = self.cls_token.expand(n, -1, -1)
        if c["class_pos"]:
            cls = cls + self.pos_embed[:, :1]
        parts = [cls]
        if self.register_tokens is not None:
            parts.append(self.register_tokens.expand(n, -1, -1))
        parts.append(patches + pos)
        t = torch.cat(parts, dim=1)
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        out = t[:, 0]
        if c["features"] == "cls_mean":
            out = torch.cat([out, t[:, 1 + c["registers"]:].mean(1)], dim=1)
        return out[:, :, None, None]


def load_encoder(path: str) -> nn.Module:
    """A libamlmil encoder checkpoint as an :class:`EncoderTrunk` (ResNet) or a
    :class:`VitEncoder` (ViT, position embeddings fixed for the manifest's input
    size) in eval mode; ``.manifest`` holds the manifest."""
    manifest, tensors = _read_kind(path, "encoder")
    if manifest.get("vit") is not None:
        vit = VitEncoder(manifest["vit"])
        vit.load_state_dict(tensors, strict=True)
        vit.manifest = manifest
        return vit.fix_input_size(int(manifest["input_size"])).eval()
    trunk = EncoderTrunk(manifest["architecture"])
    trunk.resnet.load_state_dict(tensors, strict=True)
    trunk.manifest = manifest
    return trunk.eval()


class AttentionMil(nn.Module):
    """libamlmil's attention-MIL head (Kazeminia et al.; SCEMILA's multi-column AMiL).

    ``config`` is the ``config`` object of a MIL manifest: ``cell_net`` (``{"type":
    "four_conv", "channels": [c1, c2, c3]}``, ``{"type": "scemila"}`` or
    ``{"type": "pooled"}``), ``in_channels``, ``instance_dim``, ``attention_dim``,
    ``classifier_dim``, ``num_classes``. Parameter names equal the library's
    (``g.0.weight``, ``attention.2.bias``, ``classifiers.3.0.weight``).
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.config = dict(config)
        cin, k = config["in_channels"], config["instance_dim"]
        kind = config["cell_net"]["type"]
        if kind == "four_conv":
            c1, c2, c3 = config["cell_net"]["channels"]
            self.g = nn.Sequential(
                nn.Conv2d(cin, c1, 2), nn.ReLU(), nn.Conv2d(c1, c2, 2), nn.ReLU(),
                nn.Conv2d(c2, c3, 2), nn.ReLU(), nn.Conv2d(c3, k, 2), nn.ReLU(), nn.Flatten(),
            )
        elif kind == "scemila":
            self.g = nn.Sequential(
                nn.Conv2d(cin, 768, 2), nn.ReLU(), nn.Conv2d(768, 1024, 2), nn.ReLU(),
                nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(1024, k), nn.ReLU(),
            )
        elif kind == "pooled":
            self.g = nn.Sequential(nn.Linear(cin, k), nn.ReLU())
        else:
            raise ValueError(f"unknown cell_net type {kind!r}")
        self.pooled = kind == "pooled"
        c, d = config["num_classes"], config["attention_dim"]
        self.attention = nn.Sequential(nn.Linear(k, d), nn.Tanh(), nn.Linear(d, c))
        h = config["classifier_dim"]
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Linear(k, h), nn.ReLU(), nn.Linear(h, 1)) for _ in range(c)
        )

    def instances(self, maps: torch.Tensor) -> torch.Tensor:
        """Instance vectors ``z`` ``[N, k′]`` of feature maps ``[N, C_in, s, s]``."""
        return self.g(maps.mean(dim=(2, 3)) if self.pooled else maps)

    def forward(self, maps: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One bag of feature maps ``[N, C_in, s, s]`` → logits, probabilities ``[C]``, attention ``[C, N]``."""
        z = self.instances(maps)
        attention_raw = self.attention(z).transpose(0, 1)
        attention = attention_raw.softmax(dim=1)
        bag = attention @ z
        logits = torch.cat([clf(bag[c]) for c, clf in enumerate(self.classifiers)])
        return {
            "logits": logits,
            "probabilities": logits.softmax(dim=0),
            "attention_raw": attention_raw,
            "attention": attention,
        }

    @staticmethod
    def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        """The configuration a state dict with libamlmil's names was made with."""
        if "g.6.weight" in sd and sd["g.6.weight"].dim() == 2:
            cell_net: Dict[str, Any] = {"type": "scemila"}
            cin, k = sd["g.0.weight"].shape[1], sd["g.6.weight"].shape[0]
        elif "g.6.weight" in sd:
            cell_net = {"type": "four_conv", "channels": [sd[f"g.{i}.weight"].shape[0] for i in (0, 2, 4)]}
            cin, k = sd["g.0.weight"].shape[1], sd["g.6.weight"].shape[0]
        else:
            cell_net = {"type": "pooled"}
            k, cin = sd["g.0.weight"].shape
        return {
            "cell_net": cell_net,
            "in_channels": int(cin),
            "instance_dim": int(k),
            "attention_dim": int(sd["attention.0.weight"].shape[0]),
            "classifier_dim": int(sd["classifiers.0.0.weight"].shape[0]),
            "num_classes": int(sd["attention.2.weight"].shape[0]),
        }

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "AttentionMil":
        """A head for a state dict written by ``amlmil export`` (configuration read off the shapes)."""
        model = cls(cls.config_from_state_dict(sd))
        model.load_state_dict(sd, strict=True)
        return model.eval()


def load_mil(path: str) -> AttentionMil:
    """A libamlmil MIL checkpoint as an :class:`AttentionMil` in eval mode; ``.classes`` holds the class names."""
    manifest, tensors = _read_kind(path, "mil")
    model = AttentionMil(manifest["config"])
    model.load_state_dict(tensors, strict=True)
    model.classes = list(manifest["classes"])
    model.manifest = manifest
    return model.eval()
