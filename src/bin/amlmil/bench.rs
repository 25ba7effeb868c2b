//! `amlmil bench`: encoder throughput per memory layout and precision, the
//! machine's compute ceilings (`--gemm`), and activation checkpointing's cost
//! and saving (`--training-memory`).
use amlmil::model::{init, EncoderArch};
use amlmil::{DeviceSpec, Precision, SessionOptions};

use super::emit;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Encoder architecture.
    #[arg(long, default_value = "resnet18")]
    arch: String,
    /// ViTs: time this encoder checkpoint (its architecture and input size)
    /// instead of random weights, e.g. the weights the peers are given.
    #[arg(long)]
    encoder: Option<std::path::PathBuf>,
    /// Input side in pixels.
    #[arg(long, default_value_t = 144)]
    size: i64,
    /// Cells per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: i64,
    /// Seconds to time each variant (after two warm-up passes; at least 3 passes).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<usize>,
    /// Also measure the compute ceilings: libtorch's f32 and bf16 GEMM rates
    /// (1024³) and oneDNN's f32 and bf16 3×3 convolutions at ResNet shapes.
    #[arg(long)]
    gemm: bool,
    /// `fp32`, or `bf16` (on the CPU: the fused path, where the CPU has native bf16).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Instead of inference: one training forward and backward pass of the
    /// encoder with and without activation checkpointing — seconds, and on the
    /// CPU the memory the forward pass's autograd graph holds (resident-set
    /// growth; set `MALLOC_MMAP_THRESHOLD_=65536` so freed buffers leave it).
    #[arg(long)]
    training_memory: bool,
}

/// Times the encoder's forward pass; prints JSON lines `{layout, cells_per_s}`.
pub(crate) fn bench(args: BenchArgs) -> amlmil::Result<()> {
    use amlmil::model::FusedEncoder;
    use tch::{Kind, Tensor};
    let device = args.device.parse::<DeviceSpec>()?.resolve()?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n as i32);
    }
    if let Some(path) = &args.encoder {
        let (net, manifest, vs) = amlmil::frozen::load_encoder(path, device)?;
        return match net {
            amlmil::model::EncoderNet::Vit(vit) => bench_vit(
                &args,
                manifest.architecture,
                vit,
                vs,
                manifest.input_size,
                device,
            ),
            amlmil::model::EncoderNet::ResNet(_) => Err(amlmil::Error::invalid(
                "encoder",
                "`--encoder` times ViT checkpoints; ResNets are timed by `--arch`",
            )),
        };
    }
    let arch: EncoderArch = args.arch.parse()?;
    if arch.is_vit() {
        let mut config = amlmil::model::VitConfig::preset(arch).expect("a ViT");
        config.pos_grid = config.grid(args.size);
        config.validate(arch, args.size)?;
        let (vit, vs) = init::random_vit(&config, 0);
        return bench_vit(&args, arch, vit, vs, args.size, device);
    }
    let (encoder, vs) = init::random_encoder(arch, 0);
    let mut vs = vs;
    vs.set_device(device);
    vs.freeze();
    let _guard = tch::no_grad_guard();
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    // Repeats `f` for at least `seconds` (and 3 times) after two warm-up calls; calls per second.
    let timed = |f: &mut dyn FnMut()| {
        f();
        f();
        sync();
        let start = std::time::Instant::now();
        let mut n = 0usize;
        while n < 3 || start.elapsed().as_secs_f64() < args.seconds {
            f();
            n += 1;
        }
        sync();
        n as f64 / start.elapsed().as_secs_f64()
    };
    let line = |what: serde_json::Value| emit(&what.to_string());
    let precision: Precision = args.precision.parse()?;
    if args.gemm {
        let n = 1024i64;
        for (name, kind) in [
            ("libtorch_sgemm", Kind::Float),
            ("libtorch_bf16_gemm", Kind::BFloat16),
        ] {
            let a = Tensor::rand([n, n], (kind, device));
            let b = Tensor::rand([n, n], (kind, device));
            let per_s = timed(&mut || drop(a.mm(&b)));
            line(
                serde_json::json!({"impl": name, "n": n, "threads": tch::get_num_threads(),
                "gflop_per_s": (per_s * 2.0 * (n * n * n) as f64 / 1e9 * 10.0).round() / 10.0}),
            );
        }
        if device == tch::Device::Cpu {
            let shapes = [(64, 36, 16), (128, 18, 32), (256, 9, 64), (512, 5, 128)];
            for (name, kind) in [("f32", Kind::Float), ("bf16", Kind::BFloat16)] {
                for (c, side, batch) in shapes {
                    let per_s = conv_ceiling(kind, c, side, batch, &timed)?;
                    let flop = 2.0 * (c * c * 9 * side * side * batch) as f64;
                    line(serde_json::json!({"impl": format!("onednn_{name}_conv3x3"),
                        "channels": c, "side": side, "batch": batch,
                        "threads": tch::get_num_threads(),
                        "gflop_per_s": (per_s * flop / 1e9 * 10.0).round() / 10.0}));
                }
            }
        }
    }
    let x = Tensor::rand(
        [args.batch_size, 3, args.size, args.size],
        (Kind::Float, device),
    );
    if args.training_memory {
        drop(_guard);
        return training_memory(arch, &x, device, &timed, &line);
    }
    let layouts: &[&str] = match (device, precision) {
        (tch::Device::Cpu, Precision::Fp32) => &["fused", "channels_last", "nchw"],
        (tch::Device::Cpu, _) => {
            amlmil::frozen::check_cpu_precision(&SessionOptions {
                precision,
                ..Default::default()
            })?;
            &["fused"]
        }
        // cuDNN's tensor-core kernels favour NHWC in fp16/bf16: measure both.
        _ => &["nchw", "channels_last"],
    };
    if device != tch::Device::Cpu {
        vs.set_kind(precision.kind());
    }
    let x = x.to_kind(if device == tch::Device::Cpu {
        Kind::Float
    } else {
        precision.kind()
    });
    let suffix = match precision {
        Precision::Fp32 => String::new(),
        p => format!("_{}", p.name()),
    };
    for layout in layouts {
        let per_s = match *layout {
            "fused" => {
                let fused = FusedEncoder::new(&encoder, precision.kind())?;
                timed(&mut || drop(fused.feature_map(&x)))
            }
            "channels_last" => {
                let mut nhwc_vars = Vec::new();
                for (_, v) in vs.variables() {
                    if v.dim() == 4 {
                        nhwc_vars.push((v.shallow_clone(), v.copy()));
                        let mut v = v;
                        v.set_data(&amlmil::frozen::to_channels_last(&v));
                    }
                }
                let input = amlmil::frozen::to_channels_last(&x);
                let r = timed(&mut || drop(encoder.feature_map(&input, false)));
                for (mut v, original) in nhwc_vars {
                    v.set_data(&original);
                }
                r
            }
            _ => timed(&mut || drop(encoder.feature_map(&x, false))),
        };
        let rate = per_s * args.batch_size as f64;
        line(
            serde_json::json!({"impl": format!("amlmil_{layout}{suffix}"), "precision": precision.name(),
            "arch": arch.name(), "size": args.size,
            "batch": args.batch_size, "device": amlmil::device::device_name(device),
            "threads": tch::get_num_threads(), "cells_per_s": (rate * 10.0).round() / 10.0,
            "peak_rss_mb": peak_rss_mb()}),
        );
    }
    Ok(())
}

/// Repeats `f` for at least `seconds` (and 3 times) after two warm-up calls;
/// calls per second. `sync` waits for the device.
fn timed(seconds: f64, sync: &dyn Fn(), f: &mut dyn FnMut()) -> f64 {
    f();
    f();
    sync();
    let start = std::time::Instant::now();
    let mut n = 0usize;
    while n < 3 || start.elapsed().as_secs_f64() < seconds {
        f();
        n += 1;
    }
    sync();
    n as f64 / start.elapsed().as_secs_f64()
}

/// `amlmil bench --arch vit_*` or `--encoder VIT`: the ViT's forward pass as
/// sessions run it (the module in the session's precision) at `size` px.
fn bench_vit(
    args: &BenchArgs,
    arch: EncoderArch,
    vit: amlmil::model::Vit,
    mut vs: tch::nn::VarStore,
    size: i64,
    device: tch::Device,
) -> amlmil::Result<()> {
    use tch::{Kind, Tensor};
    let precision: Precision = args.precision.parse()?;
    if device == tch::Device::Cpu {
        amlmil::frozen::check_cpu_precision(&SessionOptions {
            precision,
            ..Default::default()
        })?;
    }
    vs.set_device(device);
    vs.set_kind(precision.kind());
    vs.freeze();
    let _guard = tch::no_grad_guard();
    let x = Tensor::rand([args.batch_size, 3, size, size], (Kind::Float, device));
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    // The input arrives in f32, as a session's batch does: its conversion is timed.
    let per_s = timed(args.seconds, &sync, &mut || {
        drop(vit.feature_map(&x.to_kind(precision.kind())))
    });
    let suffix = match precision {
        Precision::Fp32 => String::new(),
        p => format!("_{}", p.name()),
    };
    let rate = per_s * args.batch_size as f64;
    emit(
        &serde_json::json!({"impl": format!("amlmil{suffix}"), "precision": precision.name(),
            "arch": arch.name(), "size": size, "batch": args.batch_size,
            "device": amlmil::device::device_name(device), "threads": tch::get_num_threads(),
            "gflop": (vit.config().flops(size) / 1e9 * 1000.0).round() / 1000.0,
            "cells_per_s": (rate * 10.0).round() / 10.0, "peak_rss_mb": peak_rss_mb()})
        .to_string(),
    );
    Ok(())
}

/// Calls per second of one oneDNN 3×3 convolution `c → c` in `kind` (f32 or
/// bf16) on `[batch, c, side, side]` with packed weights, blocked layout in and
/// out: the fastest kernel at a ResNet layer's shape, the ceiling of that
/// precision's rows.
fn conv_ceiling(
    kind: tch::Kind,
    c: i64,
    side: i64,
    batch: i64,
    timed: &dyn Fn(&mut dyn FnMut()) -> f64,
) -> amlmil::Result<f64> {
    use tch::{Device, Kind, Tensor};
    let x = Tensor::rand([batch, c, side, side], (Kind::Float, Device::Cpu)).f_to_mkldnn(kind)?;
    let w = (Tensor::rand([c, c, 3, 3], (Kind::Float, Device::Cpu)) * 0.01)
        .f_to_mkldnn(kind)?
        .f_mkldnn_reorder_conv2d_weight([1, 1], [1, 1], [1, 1], 1, None::<&[i64]>)?;
    let b = Tensor::zeros([c], (Kind::Float, Device::Cpu));
    Ok(timed(&mut || {
        drop(x.mkldnn_convolution(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1))
    }))
}

/// This process's peak resident memory (`VmHWM`) in MiB, or `None` off Linux.
/// `amlmil bench --training-memory`: a training pass of a fresh encoder on `x`
/// with and without activation checkpointing.
fn training_memory(
    arch: EncoderArch,
    x: &tch::Tensor,
    device: tch::Device,
    timed: &dyn Fn(&mut dyn FnMut()) -> f64,
    line: &dyn Fn(serde_json::Value),
) -> amlmil::Result<()> {
    use amlmil::model::{Encoder, Recompute};
    use tch::nn::ModuleT;
    let rss_mb = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: f64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(f64::NAN);
        pages * 4096.0 / 1048576.0
    };
    for checkpointing in [false, true] {
        let vs = tch::nn::VarStore::new(device);
        let mut encoder = Encoder::new(&vs.root(), arch);
        if checkpointing {
            encoder = encoder.with_recompute(std::sync::Arc::new(Recompute::new(false)));
        }
        let step = || -> amlmil::Result<()> {
            let loss = encoder
                .forward_t(x, true)
                .f_square()?
                .f_mean(tch::Kind::Float)?;
            loss.f_backward()?;
            encoder.backward_recomputed()
        };
        step()?;
        let before = rss_mb();
        let features = encoder.forward_t(x, true);
        let graph_mb = rss_mb() - before;
        drop(features);
        encoder.clear_recomputed();
        let mut failed = None;
        let per_s = timed(&mut || {
            if let Err(e) = step() {
                failed.get_or_insert(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        line(
            serde_json::json!({"impl": "amlmil_training_pass", "arch": arch.name(),
            "activation_checkpointing": checkpointing, "size": x.size()[2], "batch": x.size()[0],
            "device": amlmil::device::device_name(device),
            "forward_graph_mb": (device == tch::Device::Cpu).then(|| graph_mb.round()),
            "step_s": (1000.0 / per_s).round() / 1000.0}),
        );
    }
    Ok(())
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}
