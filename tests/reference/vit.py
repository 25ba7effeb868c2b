"""PyTorch side of tests/vit.rs: DINOv2-layout vision transformers made with timm
(PyPI `timm`, its `vit_*_patch14_dinov2` models) with random weights, written in
the layouts `amlmil import` reads, and their features.

    vit.py make DIR    # writes the source files, inputs.safetensors (x224, x140)
                       # and refs.safetensors (<case>_<size>: [N, D'] features)
    vit.py exported DIR NAME...  # runs DIR/NAME.safetensors as amlmil.models.VitEncoder
                       # and DIR/NAME.onnx in ONNX Runtime on the input of the
                       # checkpoint's size -> DIR/exported.safetensors

Layouts: a DINOv2 hub backbone's state_dict (with `mask_token`), DinoBloom's
training checkpoint (`teacher`/`student` with `backbone.` and the DINO/iBOT
heads), DINOv2's chunked blocks (`blocks.<chunk>.<i>.`), SwiGLU as DINOv2
names it (`mlp.w12`/`mlp.w3`), and timm's own names (`reg_token`, packed SwiGLU
`mlp.fc1`/`mlp.fc2`). Every parameter is random (LayerScale included, so each
block changes the features) with a scale that keeps activations O(1).

References: timm layouts are timm's forward (`dynamic_img_size=True`: position
embeddings resampled bicubic with antialiasing). DINOv2 layouts are DINOv2's
forward written out with timm's blocks, which compute what DINOv2's blocks do:
class token plus position embeddings (resized bicubic by the scale factor
(g + 0.1) / M without antialiasing, DINOv2's `interpolate_pos_encoding`),
register tokens after the class token, blocks, final norm.
"""
import math
import sys

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(0.25 + 0.5 * torch.rand(p.shape, generator=g))
            elif ("norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            elif name.endswith("bias"):
                p.copy_(0.05 * r)
            elif name in ("cls_token", "reg_token", "pos_embed"):
                p.copy_(0.5 * r)
            else:
                fan_in = p[0].numel()
                p.copy_(r / math.sqrt(fan_in))
    return model.eval()


def timm_model(name, seed, **kw):
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, num_classes=0, img_size=224,
                          dynamic_img_size=True, **kw)
    return randomise(m, seed)


def features(tokens, registers, kind):
    cls = tokens[:, 0]
    if kind == "cls":
        return cls
    return torch.cat([cls, tokens[:, 1 + registers:].mean(1)], dim=1)


def dinov2_pos(pos, g, class_pos):
    """DINOv2's interpolate_pos_encoding for a g x g grid."""
    cls = pos[:, :1] if class_pos else None
    patch = pos[:, 1:] if class_pos else pos
    m = int(math.sqrt(patch.shape[1]))
    if g != m:
        d = patch.shape[-1]
        s = (g + 0.1) / m
        patch = F.interpolate(patch.float().reshape(1, m, m, d).permute(0, 3, 1, 2),
                              scale_factor=(s, s), mode="bicubic", antialias=False)
        assert patch.shape[-2:] == (g, g)
        patch = patch.permute(0, 2, 3, 1).reshape(1, g * g, d)
    return cls, patch


def dinov2_forward(m, x, cls_token, pos, registers_tokens, class_pos):
    """DINOv2's forward_features over timm's blocks (same block math)."""
    p = m.patch_embed.proj(x)
    g = p.shape[-1]
    p = p.flatten(2).transpose(1, 2)
    cls_pos, patch_pos = dinov2_pos(pos, g, class_pos)
    cls = cls_token.expand(x.shape[0], -1, -1)
    if cls_pos is not None:
        cls = cls + cls_pos
    parts = [cls]
    if registers_tokens is not None:
        parts.append(registers_tokens.expand(x.shape[0], -1, -1))
    parts.append(p + patch_pos)
    t = torch.cat(parts, dim=1)
    for blk in m.blocks:
        t = blk(t)
    return m.norm(t)


def dinov2_names(sd, swiglu=False, chunks=0, depth=0):
    """timm's state_dict of a model without registers in DINOv2's names."""
    out = {}
    per = math.ceil(depth / chunks) if chunks else 0
    for k, v in sd.items():
        if swiglu:
            k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        if chunks and k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // per}.{k[len('blocks.'):]}"
        out[k] = v.clone()
    out["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return out


def make(d):
    torch.manual_seed(0)
    x224 = torch.randn(2, 3, 224, 224)
    x140 = torch.randn(2, 3, 140, 140)
    save_file({"x224": x224, "x140": x140}, f"{d}/inputs.safetensors")
    refs = {}

    def ref(case, fn, kind, registers=0):
        with torch.no_grad():
            for size, x in (("224", x224), ("140", x140)):
                refs[f"{case}_{size}"] = features(fn(x), registers, kind).contiguous()

    # ViT-S/14, full depth, DINOv2 hub layout (.pth, with mask_token).
    s = timm_model("vit_small_patch14_dinov2", 1)
    sd = s.state_dict()
    torch.save(dinov2_names(sd), f"{d}/s_hub.pth")
    ref("s_hub", lambda x: dinov2_forward(s, x, s.cls_token, s.pos_embed, None, True), "cls")

    # The same weights as DinoBloom's training checkpoint: teacher and student
    # backbones (the student's perturbed) with DINO and iBOT heads; cls_mean.
    teacher = {f"backbone.{k}": v for k, v in dinov2_names(sd).items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(64, 384)
    teacher["ibot_head.mlp.0.weight"] = torch.randn(64, 384)
    student = {k: v + 0.01 for k, v in teacher.items()}
    torch.save({"teacher": teacher, "student": student, "iteration": 100},
               f"{d}/s_dinobloom.pth")
    ref("s_dinobloom", lambda x: dinov2_forward(s, x, s.cls_token, s.pos_embed, None, True),
        "cls_mean")

    # ViT-S/14 with 4 registers in timm's layout (reg_token, no class row in pos_embed).
    r = timm_model("vit_small_patch14_reg4_dinov2", 2)
    save_file({k: v.contiguous() for k, v in r.state_dict().items()}, f"{d}/s_reg_timm.safetensors")
    ref("s_reg_timm", lambda x: r.forward_features(x), "cls", registers=4)

    # The same model in DINOv2's layout: register_tokens, a class row in
    # pos_embed (timm folds it into cls_token when converting).
    rs = r.state_dict()
    row = 0.3 * torch.randn(1, 1, 384, generator=torch.Generator().manual_seed(5))
    rd = {k: v.clone() for k, v in rs.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    rd["register_tokens"] = rs["reg_token"].clone()
    rd["cls_token"] = rs["cls_token"] - row
    rd["pos_embed"] = torch.cat([row, rs["pos_embed"]], dim=1)
    save_file(rd, f"{d}/s_reg_dinov2.safetensors")
    ref("s_reg_dinov2",
        lambda x: dinov2_forward(r, x, rd["cls_token"], rd["pos_embed"], rd["register_tokens"], True),
        "cls")

    # ViT-B/14, 2 blocks, timm layout, cls_mean.
    b = timm_model("vit_base_patch14_dinov2", 3, depth=2)
    save_file({k: v.contiguous() for k, v in b.state_dict().items()}, f"{d}/b_timm.safetensors")
    ref("b_timm", lambda x: b.forward_features(x), "cls_mean")

    # ViT-L/14, 2 blocks, DINOv2 training checkpoint with chunked blocks (2 chunks).
    large = timm_model("vit_large_patch14_dinov2", 4, depth=2)
    ld = dinov2_names(large.state_dict(), chunks=2, depth=2)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in ld.items()}}, f"{d}/l_chunked.pth")
    ref("l_chunked",
        lambda x: dinov2_forward(large, x, large.cls_token, large.pos_embed, None, True), "cls")

    # ViT-g/14 (SwiGLU), 1 block: timm's packed names and DINOv2's w12/w3.
    gi = timm_model("vit_giant_patch14_dinov2", 6, depth=1)
    gs = gi.state_dict()
    save_file({k: v.contiguous() for k, v in gs.items()}, f"{d}/g_timm.safetensors")
    ref("g_timm", lambda x: gi.forward_features(x), "cls")
    save_file({k: v.contiguous() for k, v in dinov2_names(gs, swiglu=True).items()},
              f"{d}/g_dinov2.safetensors")
    ref("g_dinov2", lambda x: dinov2_forward(gi, x, gi.cls_token, gi.pos_embed, None, True), "cls")

    # A ViT-Ti (192 wide): not one of the sizes.
    ti = timm_model("vit_small_patch14_dinov2", 7, embed_dim=192, num_heads=3, depth=1)
    save_file({k: v.contiguous() for k, v in ti.state_dict().items()}, f"{d}/tiny.safetensors")

    save_file(refs, f"{d}/refs.safetensors")


def exported(d, names):
    import os

    import onnxruntime as ort

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bindings", "python"))
    from amlmil.models import load_encoder
    from safetensors.torch import load_file

    inputs = load_file(f"{d}/inputs.safetensors")
    out = {}
    for name in names:
        m = load_encoder(f"{d}/{name}.safetensors")
        x = inputs[f"x{m.manifest['input_size']}"]
        with torch.no_grad():
            out[f"{name}_torch"] = m(x).flatten(1).contiguous()
        s = ort.InferenceSession(f"{d}/{name}.onnx", providers=["CPUExecutionProvider"])
        out[f"{name}_onnx"] = torch.from_numpy(s.run(None, {"pixels": x.numpy()})[0]).flatten(1)
    save_file(out, f"{d}/exported.safetensors")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) > 3 and sys.argv[1] == "exported":
        exported(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
