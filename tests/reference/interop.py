"""PyTorch side of tests/interop.rs: models in the layouts `amlmil import` reads,
made here with random weights, and runs of what `amlmil export` writes.

    interop.py make DIR        # writes the source files, x/maps inputs and refs.safetensors
    interop.py exported DIR    # runs DIR/enc.pth, DIR/mil.pth (PyTorch) and DIR/enc.onnx
                               # (ONNX Runtime) on DIR's inputs -> DIR/exported.safetensors

Key layouts follow the real checkpoints: torchvision state_dicts; VISSL's
classy_state_dict.base_model.model.trunk._feature_blocks; DINO's teacher/student
with module.backbone (and an argparse.Namespace under "args"); SwAV's
state_dict with module.; a lightly nn.Sequential(*resnet.children()[:-1]) backbone
in a Lightning-style checkpoint; SCEMILA's AMiL (attribute names of
ml_pipeline/model.py) pickled whole and as a DataParallel state_dict.
"""
import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bindings", "python"))


def resnet(arch, seed):
    torch.manual_seed(seed)
    m = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


def trunk_features(m, x):
    with torch.inference_mode():
        y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(y)))).contiguous()


def prefixed(sd, prefix, drop_fc=True):
    return {prefix + k: v for k, v in sd.items() if not (drop_fc and k.startswith("fc."))}


class AMiL(nn.Module):
    """SCEMILA's attention-MIL model: same attributes and computation, written for this test."""

    def __init__(self, class_count, multicolumn):
        super().__init__()
        self.L, self.D, self.class_count, self.multicolumn = 500, 128, class_count, multicolumn
        self.ftr_proc = nn.Sequential(
            nn.Conv2d(512, 768, 2), nn.ReLU(), nn.Conv2d(768, 1024, 2), nn.ReLU(),
            nn.AdaptiveMaxPool2d((1, 1)), nn.Flatten(), nn.Linear(1024, self.L), nn.ReLU(),
        )
        self.attention = nn.Sequential(nn.Linear(self.L, self.D), nn.Tanh(), nn.Linear(self.D, 1))
        self.classifier = nn.Sequential(nn.Linear(self.L, 64), nn.ReLU(), nn.Linear(64, class_count))
        self.attention_multi_column = nn.Sequential(
            nn.Linear(self.L, self.D), nn.Tanh(), nn.Linear(self.D, class_count)
        )
        self.classifier_multi_column = nn.ModuleList(
            nn.Sequential(nn.Linear(self.L, 64), nn.ReLU(), nn.Linear(64, 1)) for _ in range(class_count)
        )

    def forward(self, x):
        ft = self.ftr_proc(x.squeeze(0))
        att_raw = self.attention_multi_column(ft).transpose(1, 0)
        preds = []
        for a in range(self.class_count):
            w = F.softmax(att_raw[a][None, :], dim=1)
            preds.append(self.classifier_multi_column[a](torch.mm(w, ft)))
        return torch.stack(preds).view(1, self.class_count), att_raw, F.softmax(att_raw, dim=1)


def make(d):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 144, 144)
    maps = torch.relu(torch.randn(7, 512, 5, 5))
    save_file({"x": x, "maps": maps}, os.path.join(d, "inputs.safetensors"))
    refs = {}
    p = lambda name: os.path.join(d, name)  # noqa: E731

    tv18, tv34 = resnet("resnet18", 1), resnet("resnet34", 2)
    refs["tv18"], refs["tv34"] = trunk_features(tv18, x), trunk_features(tv34, x)
    torch.save(tv18.state_dict(), p("tv18_fc.pth"))
    torch.save(prefixed(tv34.state_dict(), ""), p("tv34_nofc.pth"))
    save_file({k: v.contiguous() for k, v in prefixed(tv18.state_dict(), "").items()}, p("tv18.safetensors"))

    trunk = prefixed(tv18.state_dict(), "_feature_blocks.")
    torch.save(
        {
            "phase_idx": 4,
            "iteration": 1000,
            "classy_state_dict": {
                "base_model": {
                    "model": {"trunk": trunk, "heads": {"0.clf.0.weight": torch.randn(128, 512)}},
                    "meta": {"model_version": 1},
                },
                "loss": {"queue": torch.randn(8, 128)},
            },
        },
        p("vissl.torch"),
    )

    teacher, student = resnet("resnet18", 3), resnet("resnet18", 4)
    refs["teacher"], refs["student"] = trunk_features(teacher, x), trunk_features(student, x)
    head = {"module.head.mlp.0.weight": torch.randn(64, 512), "module.head.last_layer.weight_g": torch.randn(256, 1)}
    torch.save(
        {
            "student": {**prefixed(student.state_dict(), "module.backbone."), **head},
            "teacher": {**prefixed(teacher.state_dict(), "module.backbone."), **head},
            "optimizer": {"state": {0: {"momentum_buffer": torch.randn(64, 3, 7, 7)}}, "param_groups": [{"lr": 0.1}]},
            "epoch": 100,
            "args": argparse.Namespace(arch="resnet18", out_dim=65536, lr=0.3),
            "dino_loss": {"center": torch.randn(1, 256)},
        },
        p("dino.pth"),
    )

    swav = resnet("resnet18", 5)
    refs["swav"] = trunk_features(swav, x)
    torch.save(
        {
            "epoch": 400,
            "state_dict": {
                **prefixed(swav.state_dict(), "module."),
                "module.projection_head.0.weight": torch.randn(2048, 512),
                "module.prototypes.weight": torch.randn(3000, 128),
            },
            "optimizer": {"state": {}, "param_groups": []},
        },
        p("swav.pth.tar"),
    )

    lightly = resnet("resnet18", 6)
    refs["lightly"] = trunk_features(lightly, x)
    backbone = nn.Sequential(*list(lightly.children())[:-1])
    torch.save(
        {
            "epoch": 10,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {
                **{"backbone." + k: v for k, v in backbone.state_dict().items()},
                "projection_head.layers.0.weight": torch.randn(512, 512),
            },
        },
        p("lightly.ckpt"),
    )

    bottleneck = prefixed(tv18.state_dict(), "")
    bottleneck["layer1.0.conv3.weight"] = torch.randn(256, 64, 1, 1)
    torch.save(bottleneck, p("bottleneck.pth"))
    missing = prefixed(tv18.state_dict(), "")
    del missing["layer3.1.bn2.running_var"]
    torch.save(missing, p("missing.pth"))
    wide = prefixed(tv18.state_dict(), "")
    wide["layer2.0.conv1.weight"] = torch.randn(256, 64, 3, 3)
    torch.save(wide, p("wide.pth"))
    with open(p("tv18_fc.pth"), "rb") as f:
        data = f.read()
    with open(p("truncated.pth"), "wb") as f:
        f.write(data[: len(data) // 2])

    torch.manual_seed(7)
    amil = AMiL(5, True).eval()
    with torch.no_grad():
        logits, att_raw, att = amil(maps[None])
    refs["scemila_logits"], refs["scemila_att_raw"], refs["scemila_att"] = logits[0], att_raw, att
    torch.save(amil, p("scemila_model.pt"))
    torch.save({"module." + k: v for k, v in amil.state_dict().items()}, p("scemila_state.pth"))
    torch.save(AMiL(5, False), p("scemila_single.pt"))
    # As SCEMILA's pipeline builds it: AMiL(..., multicolumn=int(args.multi_att)).
    torch.save(AMiL(5, 0), p("scemila_single_int.pt"))
    # As pandas writes SCEMILA's label_converter frame: an index column, rows in any order.
    with open(p("class_conversion.csv"), "w") as f:
        f.write(",art_lbl,true_lbl,s_train,s_val,s_test,size_tot\n")
        for i, (art, name) in enumerate([(2, "CBFB_MYH11"), (0, "PML_RARA"), (4, "control"), (1, "NPM1"), (3, "RUNX1_RUNX1T1")]):
            f.write(f"{i},{art},{name},10,2,3,15\n")
    save_file({k: v.contiguous() for k, v in refs.items()}, p("refs.safetensors"))


def exported(d):
    import numpy as np
    import onnxruntime as ort

    from amlmil.models import AttentionMil, encoder_from_state_dict

    inputs = load_file(os.path.join(d, "inputs.safetensors"))
    enc = encoder_from_state_dict(torch.load(os.path.join(d, "enc.pth"), weights_only=True))
    mil = AttentionMil.from_state_dict(torch.load(os.path.join(d, "mil.pth"), weights_only=True))
    with torch.inference_mode():
        fmap = enc(inputs["x"])
        out = mil(inputs["maps"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(d, "enc.onnx"), so, providers=["CPUExecutionProvider"])
    onnx_fmap = sess.run(["feature_map"], {"pixels": inputs["x"].numpy().astype(np.float32)})[0]
    save_file(
        {
            "feature_map": fmap.contiguous(),
            "onnx_feature_map": torch.from_numpy(onnx_fmap).contiguous(),
            **{k: v.contiguous() for k, v in out.items()},
        },
        os.path.join(d, "exported.safetensors"),
    )


if __name__ == "__main__":
    {"make": make, "exported": exported}[sys.argv[1]](sys.argv[2])
