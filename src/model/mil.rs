//! The attention-MIL head: a patient's bag of cell feature maps → one of C classes,
//! with a separate softmax attention over the cells for every class.
//!
//! Follows Kazeminia et al. (the paper this library implements) and Hehr et al.'s
//! SCEMILA (`AMiL`): per cell `z_n = g(f_n)`; attention
//! `A = Linear(k′,128) → tanh → Linear(128,C)` gives a C×N matrix whose rows are
//! soft-maxed over the cells; `Z_c = Σ_n a_n^c z_n`; class `c`'s logit is
//! `Linear(k′,64) → ReLU → Linear(64,1)` applied to `Z_c`.
//!
//! Variable names mirror a PyTorch module with `g`, `attention` and `classifiers`
//! (`nn.Sequential`s and an `nn.ModuleList`), e.g. `g.0.weight`,
//! `attention.2.bias`, `classifiers.3.0.weight`.
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// How a cell's feature map becomes its instance vector `z_n` (the paper's `g`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CellNet {
    /// The paper's "four-convolution layer network": four 2×2 convolutions with ReLU
    /// taking the 5×5 map to 1×1. `channels` are the three hidden widths; the paper
    /// does not state them, ours default to 512 (the encoder's width) throughout.
    FourConv { channels: [i64; 3] },
    /// SCEMILA's `ftr_proc`: Conv 512→768 k2, ReLU, Conv 768→1024 k2, ReLU,
    /// adaptive max-pool to 1×1, Linear 1024→k′, ReLU.
    Scemila,
    /// For encoders that only give a vector: the map is averaged, then Linear 512→k′, ReLU.
    Pooled,
}

impl Default for CellNet {
    fn default() -> Self {
        CellNet::FourConv {
            channels: [512, 512, 512],
        }
    }
}

/// The head's design, chosen by whoever trains it: the per-cell network `g` and
/// the layer widths. [`MilConfig`] adds the sizes the encoder and the classes
/// fix; a training configuration ([`crate::training::MilTrainConfig`]) embeds
/// this. In JSON its keys sit beside the other keys of either (flattened).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MilHeadConfig {
    pub cell_net: CellNet,
    /// k′, the instance vector size (500 in the paper).
    pub instance_dim: i64,
    /// Hidden width of the attention network (128).
    pub attention_dim: i64,
    /// Hidden width of each per-class classifier (64).
    pub classifier_dim: i64,
}

impl Default for MilHeadConfig {
    fn default() -> Self {
        MilHeadConfig {
            cell_net: CellNet::default(),
            instance_dim: 500,
            attention_dim: 128,
            classifier_dim: 64,
        }
    }
}

/// The default widths around another `g`.
impl From<CellNet> for MilHeadConfig {
    fn from(cell_net: CellNet) -> Self {
        MilHeadConfig {
            cell_net,
            ..MilHeadConfig::default()
        }
    }
}

/// Shape of the MIL head: its design plus the sizes of what it is fed and
/// predicts. Stored in every MIL checkpoint's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MilConfig {
    #[serde(flatten)]
    pub head: MilHeadConfig,
    /// Channels of the encoder feature map fed in (512 for ResNet18/34).
    pub in_channels: i64,
    /// Side of the (square) feature map fed in (5 for 144 px cells).
    pub in_side: i64,
    /// Number of classes C.
    pub num_classes: i64,
}

impl Default for MilConfig {
    fn default() -> Self {
        MilConfig {
            head: MilHeadConfig::default(),
            in_channels: 512,
            in_side: 5,
            num_classes: crate::classes::NUM_CLASSES as i64,
        }
    }
}

impl MilConfig {
    /// Checks that the sizes are positive and that `g` can consume the feature map.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("in_channels", self.in_channels),
            ("in_side", self.in_side),
            ("instance_dim", self.head.instance_dim),
            ("attention_dim", self.head.attention_dim),
            ("classifier_dim", self.head.classifier_dim),
            ("num_classes", self.num_classes),
        ] {
            if v <= 0 {
                return Err(Error::invalid(name, format!("must be positive, got {v}")));
            }
        }
        match &self.head.cell_net {
            CellNet::FourConv { channels } => {
                if self.in_side != 5 {
                    return Err(Error::invalid(
                        "in_side",
                        format!(
                            "the four-convolution g needs a 5x5 feature map (144 px cells), got {0}x{0}; use `scemila` or `pooled`",
                            self.in_side
                        ),
                    ));
                }
                if let Some(c) = channels.iter().find(|c| **c <= 0) {
                    return Err(Error::invalid(
                        "cell_net.channels",
                        format!("must be positive, got {c}"),
                    ));
                }
            }
            CellNet::Scemila if self.in_side < 3 => {
                return Err(Error::invalid(
                    "in_side",
                    format!(
                        "SCEMILA's g needs a feature map of at least 3x3, got {0}x{0}",
                        self.in_side
                    ),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Name and shape of every variable [`AttentionMil::new`] creates, computed
    /// without allocating them: a checkpoint's tensors are checked against these
    /// before the head is built, so a manifest declaring a huge head is refused
    /// instead of allocated.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let mut shapes = Vec::new();
        let mut linear = |name: String, cin: i64, cout: i64| {
            shapes.push((format!("{name}.weight"), vec![cout, cin]));
            shapes.push((format!("{name}.bias"), vec![cout]));
        };
        let mut convs = Vec::new();
        let k = self.head.instance_dim;
        match &self.head.cell_net {
            CellNet::FourConv { channels } => {
                let [c1, c2, c3] = *channels;
                for (i, (cin, cout)) in [(self.in_channels, c1), (c1, c2), (c2, c3), (c3, k)]
                    .into_iter()
                    .enumerate()
                {
                    convs.push((format!("g.{}", 2 * i), cin, cout));
                }
            }
            CellNet::Scemila => {
                convs.push(("g.0".into(), self.in_channels, 768));
                convs.push(("g.2".into(), 768, 1024));
                linear("g.6".into(), 1024, k);
            }
            CellNet::Pooled => linear("g.0".into(), self.in_channels, k),
        }
        linear("attention.0".into(), k, self.head.attention_dim);
        linear(
            "attention.2".into(),
            self.head.attention_dim,
            self.num_classes,
        );
        for c in 0..self.num_classes {
            linear(format!("classifiers.{c}.0"), k, self.head.classifier_dim);
            linear(format!("classifiers.{c}.2"), self.head.classifier_dim, 1);
        }
        for (name, cin, cout) in convs {
            shapes.push((format!("{name}.weight"), vec![cout, cin, 2, 2]));
            shapes.push((format!("{name}.bias"), vec![cout]));
        }
        shapes
    }
}

/// Everything the head computes for one bag.
#[derive(Debug)]
pub struct MilOutput {
    /// `[C]` class scores before the softmax.
    pub logits: Tensor,
    /// `[C]` softmax of the logits.
    pub probabilities: Tensor,
    /// `[C, N]` attention scores before the softmax over cells.
    pub attention_raw: Tensor,
    /// `[C, N]` attention; every row sums to 1.
    pub attention: Tensor,
}

/// The attention-MIL head.
#[derive(Debug)]
pub struct AttentionMil {
    config: MilConfig,
    g: CellNetLayers,
    attention: nn::Sequential,
    classifiers: Vec<nn::Sequential>,
}

/// The layers of `g`: the four-convolution network keeps its convolutions (the
/// fused CPU path packs them), the others are a plain sequence.
#[derive(Debug)]
enum CellNetLayers {
    FourConv(Box<[nn::Conv2D; 4]>),
    Sequential(nn::SequentialT),
}

fn conv2(p: nn::Path, cin: i64, cout: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 2, Default::default())
}

impl AttentionMil {
    /// Builds the head's variables under `p`. Call [`MilConfig::validate`] first.
    pub fn new(p: &nn::Path, config: MilConfig) -> Self {
        let g_path = p / "g";
        let k = config.head.instance_dim;
        let g = match &config.head.cell_net {
            CellNet::FourConv { channels } => {
                let [c1, c2, c3] = *channels;
                CellNetLayers::FourConv(Box::new([
                    conv2(&g_path / "0", config.in_channels, c1),
                    conv2(&g_path / "2", c1, c2),
                    conv2(&g_path / "4", c2, c3),
                    conv2(&g_path / "6", c3, k),
                ]))
            }
            CellNet::Scemila => CellNetLayers::Sequential(
                nn::seq_t()
                    .add(conv2(&g_path / "0", config.in_channels, 768))
                    .add_fn(|x| x.relu())
                    .add(conv2(&g_path / "2", 768, 1024))
                    .add_fn(|x| x.relu().adaptive_max_pool2d([1, 1]).0.flatten(1, -1))
                    .add(nn::linear(&g_path / "6", 1024, k, Default::default()))
                    .add_fn(|x| x.relu()),
            ),
            CellNet::Pooled => CellNetLayers::Sequential(
                nn::seq_t()
                    .add_fn(|x| x.mean_dim([2i64, 3].as_slice(), false, x.kind()))
                    .add(nn::linear(
                        &g_path / "0",
                        config.in_channels,
                        k,
                        Default::default(),
                    ))
                    .add_fn(|x| x.relu()),
            ),
        };
        let a = p / "attention";
        let attention = nn::seq()
            .add(nn::linear(
                &a / "0",
                k,
                config.head.attention_dim,
                Default::default(),
            ))
            .add_fn(|x| x.tanh())
            .add(nn::linear(
                &a / "2",
                config.head.attention_dim,
                config.num_classes,
                Default::default(),
            ));
        let classifiers = (0..config.num_classes)
            .map(|c| {
                let q = p / "classifiers" / c.to_string();
                nn::seq()
                    .add(nn::linear(
                        &q / "0",
                        k,
                        config.head.classifier_dim,
                        Default::default(),
                    ))
                    .add_fn(|x| x.relu())
                    .add(nn::linear(
                        &q / "2",
                        config.head.classifier_dim,
                        1,
                        Default::default(),
                    ))
            })
            .collect();
        AttentionMil {
            config,
            g,
            attention,
            classifiers,
        }
    }

    pub fn config(&self) -> &MilConfig {
        &self.config
    }

    /// Instance vectors `z`, `[N, k′]`, for feature maps `[N, C_in, s, s]`.
    pub fn instances(&self, feature_maps: &Tensor, train: bool) -> Tensor {
        match &self.g {
            CellNetLayers::Sequential(g) => nn::ModuleT::forward_t(g, feature_maps, train),
            CellNetLayers::FourConv(convs) => convs
                .iter()
                .fold(feature_maps.shallow_clone(), |x, c| x.apply(c).relu())
                .flatten(1, -1),
        }
    }

    /// The four convolutions of `g` when it is the paper's four-convolution network.
    pub fn four_conv_layers(&self) -> Option<&[nn::Conv2D; 4]> {
        match &self.g {
            CellNetLayers::FourConv(c) => Some(c.as_ref()),
            CellNetLayers::Sequential(_) => None,
        }
    }

    /// Runs the head on one bag of feature maps `[N, C_in, s, s]`.
    pub fn forward_bag(&self, feature_maps: &Tensor, train: bool) -> MilOutput {
        let z = self.instances(feature_maps, train);
        self.forward_instances(&z)
    }

    /// The attention pooling and classifiers for instance vectors `z` `[N, k′]`.
    pub fn forward_instances(&self, z: &Tensor) -> MilOutput {
        let attention_raw = self.attention.forward(z).transpose(0, 1); // [C, N]
        let attention = attention_raw.softmax(1, Kind::Float).to_kind(z.kind());
        let bag = attention.matmul(z); // [C, k′]
        let logits = Tensor::cat(
            &self
                .classifiers
                .iter()
                .enumerate()
                .map(|(c, clf)| clf.forward(&bag.get(c as i64)))
                .collect::<Vec<_>>(),
            0,
        );
        let probabilities = logits.softmax(0, Kind::Float);
        MilOutput {
            logits,
            probabilities,
            attention_raw,
            attention,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parameter_shapes` is what `AttentionMil::new` builds, for every `g`.
    #[test]
    fn parameter_shapes_match_the_built_head() {
        for cell_net in [
            CellNet::FourConv {
                channels: [3, 5, 7],
            },
            CellNet::Scemila,
            CellNet::Pooled,
        ] {
            let config = MilConfig {
                head: MilHeadConfig {
                    cell_net,
                    instance_dim: 6,
                    attention_dim: 4,
                    classifier_dim: 3,
                },
                in_channels: 8,
                in_side: 5,
                num_classes: 3,
            };
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let _ = AttentionMil::new(&vs.root(), config.clone());
            let mut built: Vec<(String, Vec<i64>)> = vs
                .variables()
                .into_iter()
                .map(|(k, v)| (k, v.size()))
                .collect();
            let mut shapes = config.parameter_shapes();
            built.sort();
            shapes.sort();
            assert_eq!(shapes, built, "{:?}", config.head.cell_net);
        }
    }
}
