//! Self-supervised losses against their PyTorch references
//! (`tests/reference/ssl_losses.py`, written from the papers' formulas), and the
//! augmentations' invariants.
//!
//! The reference runs once for all cases (one Python start): inputs are drawn
//! here with `tch::manual_seed`, written to safetensors, and the script's float64
//! outputs are compared with ours (float32) within 1e-5.
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use amlmil::ssl::augment::{self, Padding};
use amlmil::ssl::dino::{DinoConfig, DinoLoss};
use amlmil::ssl::{nt_xent_loss, sinkhorn, swav_loss, MultiCropConfig, Prototypes};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Tensor};

const TOL: f64 = 1e-5;

/// A tensor kept as plain data, so the cached reference can be shared between
/// test threads (`Tensor` is not `Sync`).
#[derive(Clone)]
struct Data {
    shape: Vec<i64>,
    values: Vec<f64>,
}

impl Data {
    fn of(t: &Tensor) -> Data {
        let t = t.to_kind(Kind::Double).contiguous();
        Data {
            shape: t.size(),
            values: Vec::<f64>::try_from(t.flatten(0, -1)).unwrap(),
        }
    }

    /// As float32, the kind our code runs in.
    fn tensor(&self) -> Tensor {
        Tensor::from_slice(&self.values)
            .view(self.shape.as_slice())
            .to_kind(Kind::Float)
    }
}

struct Reference {
    inputs: HashMap<String, Data>,
    outputs: HashMap<String, Data>,
}

impl Reference {
    fn input(&self, name: &str) -> Tensor {
        self.inputs[name].tensor()
    }
    fn inputs(&self, prefix: &str) -> Vec<Tensor> {
        (0..)
            .map(|v| format!("{prefix}.{v}"))
            .take_while(|n| self.inputs.contains_key(n))
            .map(|n| self.input(&n))
            .collect()
    }
    fn scalar(&self, name: &str) -> f64 {
        self.inputs[name].values[0]
    }
    /// As float64, the kind the reference computes in.
    fn output(&self, name: &str) -> Tensor {
        let d = self
            .outputs
            .get(name)
            .unwrap_or_else(|| panic!("the reference wrote no `{name}`"));
        Tensor::from_slice(&d.values).view(d.shape.as_slice())
    }
}

fn unit_rows(t: Tensor) -> Tensor {
    &t / t.norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
}

/// The inputs of every case, and the reference's outputs for them (computed once).
fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        tch::manual_seed(2024);
        let f = (Kind::Float, Device::Cpu);
        let scalar = |v: f64| Tensor::from(v);
        let mut inputs: Vec<(String, Tensor)> = vec![
            ("simclr.z1".into(), Tensor::randn([8, 16], f)),
            ("simclr.z2".into(), Tensor::randn([8, 16], f)),
            ("simclr.temperature".into(), scalar(0.1)),
        ];
        // Cosine scores as SwAV's: unit embeddings against unit prototypes.
        let protos = unit_rows(Tensor::randn([12, 8], f));
        inputs.push((
            "sinkhorn.scores".into(),
            unit_rows(Tensor::randn([32, 8], f)).matmul(&protos.tr()),
        ));
        inputs.push(("sinkhorn.epsilon".into(), scalar(0.05)));
        inputs.push(("sinkhorn.iterations".into(), scalar(3.0)));
        for v in 0..4 {
            inputs.push((
                format!("swav.scores.{v}"),
                unit_rows(Tensor::randn([16, 8], f)).matmul(&protos.tr()),
            ));
        }
        for i in 0..2 {
            inputs.push((
                format!("swav.queue.{i}"),
                unit_rows(Tensor::randn([24, 8], f)).matmul(&protos.tr()),
            ));
        }
        inputs.push((
            "swav.assignment_crops".into(),
            Tensor::from_slice(&[0i64, 1]),
        ));
        inputs.push(("swav.temperature".into(), scalar(0.1)));
        inputs.push(("swav.epsilon".into(), scalar(0.05)));
        inputs.push(("swav.iterations".into(), scalar(3.0)));
        for v in 0..4 {
            inputs.push((format!("dino.student.{v}"), Tensor::randn([8, 32], f) * 2.0));
        }
        for v in 0..2 {
            inputs.push((format!("dino.teacher.{v}"), Tensor::randn([8, 32], f) * 2.0));
        }
        inputs.push(("dino.center".into(), Tensor::randn([1, 32], f) * 0.3));
        for (name, v) in [
            ("student_temperature", 0.1),
            ("warmup_teacher_temperature", 0.04),
            ("teacher_temperature", 0.07),
            ("warmup_epochs", 10.0),
            ("epoch", 5.0),
            ("center_momentum", 0.9),
        ] {
            inputs.push((format!("dino.{name}"), scalar(v)));
        }

        let dir = tempfile::tempdir().unwrap();
        let (in_path, out_path) = (
            dir.path().join("in.safetensors"),
            dir.path().join("out.safetensors"),
        );
        Tensor::write_safetensors(&inputs, &in_path).unwrap();
        common::run_reference("ssl_losses.py", &[&in_path, &out_path, Path::new("all")]);
        let outputs = Tensor::read_safetensors(&out_path)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, Data::of(&t)))
            .collect();
        let inputs = inputs.into_iter().map(|(n, t)| (n, Data::of(&t))).collect();
        Reference { inputs, outputs }
    })
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor, tol: f64) {
    assert_eq!(ours.size(), theirs.size(), "{name}: shapes differ");
    let d = max_abs(ours, theirs);
    eprintln!("{name}: max |ours − reference| = {d:e}");
    assert!(d <= tol, "{name}: max |ours − reference| = {d:e} > {tol:e}");
}

#[test]
fn nt_xent_matches_reference() {
    let r = reference();
    let z1 = r.input("simclr.z1").set_requires_grad(true);
    let loss = nt_xent_loss(&z1, &r.input("simclr.z2"), r.scalar("simclr.temperature")).unwrap();
    loss.backward();
    assert_close("NT-Xent", &loss, &r.output("simclr.loss"), TOL);
    assert_close(
        "NT-Xent ∂/∂z1",
        &z1.grad(),
        &r.output("simclr.grad_z1"),
        TOL,
    );
    // One image has no negative of another image.
    let one = Tensor::ones([1, 4], (Kind::Float, Device::Cpu));
    let err = nt_xent_loss(&one, &one, 0.1).unwrap_err().to_string();
    assert!(err.contains("at least 2"), "{err}");
}

#[test]
fn sinkhorn_matches_reference() {
    let r = reference();
    let q = sinkhorn(
        &r.input("sinkhorn.scores"),
        r.scalar("sinkhorn.epsilon"),
        r.scalar("sinkhorn.iterations") as usize,
    )
    .unwrap();
    assert_close("Sinkhorn codes", &q, &r.output("sinkhorn.codes"), TOL);
    assert!(sinkhorn(&Tensor::zeros([3], (Kind::Float, Device::Cpu)), 0.05, 3).is_err());
}

#[test]
fn sinkhorn_meets_marginals() {
    tch::manual_seed(5);
    let (b, k) = (48i64, 12i64);
    let f = (Kind::Float, Device::Cpu);
    let scores =
        unit_rows(Tensor::randn([b, 8], f)).matmul(&unit_rows(Tensor::randn([k, 8], f)).tr());
    // After the last (column) step every sample's code sums to 1 exactly; the
    // prototype marginals (B/K each, in units of the returned B·Qᵀ) converge with
    // iterations.
    for iterations in [3, 200] {
        let q = sinkhorn(&scores, 0.05, iterations).unwrap();
        let per_sample = q.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        assert_close(
            "sample marginals",
            &per_sample,
            &per_sample.ones_like(),
            1e-4,
        );
        assert!(q.min().double_value(&[]) >= 0.0);
        if iterations == 200 {
            let per_prototype = q.sum_dim_intlist([0i64].as_slice(), false, Kind::Float) / b as f64;
            let want = per_prototype.ones_like() / k as f64;
            assert_close("prototype marginals", &per_prototype, &want, 1e-4);
        }
    }
}

#[test]
fn swav_loss_matches_reference() {
    let r = reference();
    let scores: Vec<Tensor> = r
        .inputs("swav.scores")
        .into_iter()
        .map(|s| s.set_requires_grad(true))
        .collect();
    let (t, eps, its) = (
        r.scalar("swav.temperature"),
        r.scalar("swav.epsilon"),
        r.scalar("swav.iterations") as usize,
    );
    let loss = swav_loss(&scores, &[0, 1], t, eps, its, None).unwrap();
    loss.backward();
    assert_close("SwAV loss", &loss, &r.output("swav.loss"), TOL);
    assert_close(
        "SwAV ∂/∂scores₂",
        &scores[2].grad(),
        &r.output("swav.grad_scores_2"),
        TOL,
    );
    let queue = r.inputs("swav.queue");
    let with_queue = swav_loss(&scores, &[0, 1], t, eps, its, Some(&queue)).unwrap();
    assert_close(
        "SwAV loss with queue",
        &with_queue,
        &r.output("swav.loss_queue"),
        TOL,
    );

    let one = vec![scores[0].narrow(0, 0, 1), scores[1].narrow(0, 0, 1)];
    assert!(swav_loss(&one, &[0], t, eps, its, None).is_err());
    assert!(swav_loss(&scores, &[4], t, eps, its, None).is_err());
    assert!(swav_loss(&scores[..1], &[0], t, eps, its, None).is_err());
}

#[test]
fn prototypes_normalise_and_freeze() {
    tch::manual_seed(9);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut protos = Prototypes::new(&vs.root(), 8, 5).unwrap();
    // The embeddings carry gradient, as the head's output does.
    let z = unit_rows(Tensor::randn([4, 8], (Kind::Float, Device::Cpu))).set_requires_grad(true);
    assert!(protos.freeze_for_iterations(0, 2));
    protos.scores(&z).unwrap().sum(Kind::Float).backward();
    assert!(
        !protos.weight().grad().defined(),
        "frozen prototypes got a gradient"
    );
    assert!(!protos.freeze_for_iterations(2, 2));
    protos.scores(&z).unwrap().sum(Kind::Float).backward();
    assert!(protos.weight().grad().defined());
    tch::no_grad(|| {
        let _ = protos.weight().shallow_clone().f_mul_scalar_(3.0).unwrap();
    });
    protos.normalize_();
    let norms = protos
        .weight()
        .norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
    assert_close("prototype norms", &norms, &norms.ones_like(), 1e-6);
}

#[test]
fn dino_loss_and_center_match_reference() {
    let r = reference();
    let config = DinoConfig {
        out_dim: 32,
        student_temperature: r.scalar("dino.student_temperature"),
        warmup_teacher_temperature: r.scalar("dino.warmup_teacher_temperature"),
        teacher_temperature: r.scalar("dino.teacher_temperature"),
        warmup_teacher_temperature_epochs: r.scalar("dino.warmup_epochs") as u64,
        center_momentum: r.scalar("dino.center_momentum"),
        ..Default::default()
    };
    let mut loss_fn = DinoLoss::new(&config, Device::Cpu).unwrap();
    loss_fn.set_center(&r.input("dino.center")).unwrap();
    let epoch = r.scalar("dino.epoch") as u64;
    let want_tau = r.outputs["dino.teacher_temperature"].values[0];
    assert!((loss_fn.teacher_temperature(epoch) - want_tau).abs() < 1e-12);

    let student: Vec<Tensor> = r
        .inputs("dino.student")
        .into_iter()
        .map(|s| s.set_requires_grad(true))
        .collect();
    let teacher = r.inputs("dino.teacher");
    let loss = loss_fn.forward(&student, &teacher, epoch).unwrap();
    loss.backward();
    assert_close("DINO loss", &loss, &r.output("dino.loss"), TOL);
    assert_close(
        "DINO ∂/∂s₃",
        &student[3].grad(),
        &r.output("dino.grad_student_3"),
        TOL,
    );
    assert_close(
        "DINO centre",
        loss_fn.center(),
        &r.output("dino.center"),
        TOL,
    );
}

// ------------------------------------------------------------ augmentations

fn cells(n: i64, size: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand([n, 3, size, size], (Kind::Float, Device::Cpu))
}

#[test]
fn multicrop_shapes_range_and_determinism() {
    let x = cells(4, 64, 1);
    for preset in ["simclr-cpu-small", "swav-cpu-small", "dino-cpu-small"] {
        let cfg = MultiCropConfig::preset(preset).unwrap();
        let views = cfg.views(&x, &mut ChaCha8Rng::seed_from_u64(11)).unwrap();
        assert_eq!(views.len(), cfg.num_views(), "{preset}");
        for (i, v) in views.iter().enumerate() {
            let side = if i < cfg.global.count { 64 } else { 28 };
            assert_eq!(v.size(), [4, 3, side, side], "{preset} view {i}");
            let (lo, hi) = (v.min().double_value(&[]), v.max().double_value(&[]));
            assert!(
                lo >= 0.0 && hi <= 1.0,
                "{preset} view {i}: values in [{lo}, {hi}]"
            );
        }
        let again = cfg.views(&x, &mut ChaCha8Rng::seed_from_u64(11)).unwrap();
        for (a, b) in views.iter().zip(&again) {
            assert!(a.equal(b), "{preset}: same seed, different views");
        }
        let other = cfg.views(&x, &mut ChaCha8Rng::seed_from_u64(12)).unwrap();
        assert!(
            views.iter().zip(&other).any(|(a, b)| !a.equal(b)),
            "{preset}: different seeds, same views"
        );
    }
}

#[test]
fn flips_are_exact() {
    let x = cells(3, 9, 2);
    let h = augment::hflip(&x).unwrap();
    assert!(h.select(3, 0).equal(&x.select(3, 8)));
    assert!(augment::hflip(&h).unwrap().equal(&x));
    let v = augment::vflip(&x).unwrap();
    assert!(v.select(2, 0).equal(&x.select(2, 8)));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let both = augment::random_flips(&x, 1.0, 1.0, &mut rng).unwrap();
    assert!(both.equal(&x.flip([2, 3])));
    assert!(augment::random_flips(&x, 0.0, 0.0, &mut rng)
        .unwrap()
        .equal(&x));
}

#[test]
fn rotation_by_zero_is_identity_and_quarter_turn_is_exact() {
    let x = cells(2, 16, 3);
    for padding in [Padding::Zeros, Padding::Border, Padding::Reflection] {
        let r = augment::rotate(&x, &[0.0, 0.0], padding).unwrap();
        assert_close("rotation by 0", &r, &x, 1e-5);
    }
    // Counter-clockwise quarter turn: new[i][j] = old[j][W − 1 − i].
    let r = augment::rotate(&x, &[90.0, 90.0], Padding::Zeros).unwrap();
    assert_close("rotation by 90°", &r, &x.flip([3]).transpose(2, 3), 1e-4);
}

#[test]
fn blur_keeps_constant_images_and_crops_keep_the_image() {
    let grey = Tensor::full([2, 3, 20, 20], 0.37, (Kind::Float, Device::Cpu));
    let b = augment::gaussian_blur(&grey, &[0.3, 2.0]).unwrap();
    assert_close("blurred constant", &b, &grey, 1e-6);
    let x = cells(2, 20, 4);
    let b = augment::gaussian_blur(&x, &[1.0, 2.0]).unwrap();
    assert!(max_abs(&b, &x) > 0.05, "blur changed nothing");
    let full = augment::CropBox {
        top: 0.0,
        left: 0.0,
        height: 20.0,
        width: 20.0,
    };
    let c = augment::resized_crop(&x, &[full, full], 20).unwrap();
    assert_close("whole-image crop", &c, &x, 1e-5);
    let half = augment::resized_crop(&x, &[full, full], 10).unwrap();
    // k = 2 samples per axis at the centres of 2×2 blocks: a 2×2 average pool.
    assert_close(
        "downscaled crop",
        &half,
        &x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>),
        1e-5,
    );
}

#[test]
fn colour_operations() {
    let x = cells(4, 8, 5);
    let g = augment::grayscale(&x).unwrap();
    assert!(g.select(1, 0).equal(&g.select(1, 2)));
    let j = augment::ColorJitter::simclr(1.0);
    let y = j.apply(&x, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert!(y.min().double_value(&[]) >= 0.0 && y.max().double_value(&[]) <= 1.0);
    assert!(max_abs(&y, &x) > 0.01);
    let s = augment::solarize(&x, 0.5).unwrap();
    let want = (x.neg() + 1.0).where_self(&x.ge(0.5), &x);
    assert!(s.equal(&want));
    let bright = augment::adjust_brightness(&x, &[1.0; 4]).unwrap();
    assert!(bright.equal(&x));
}

#[test]
fn views_on_cuda_match_cpu() {
    if !tch::Cuda::is_available() {
        eprintln!("views_on_cuda_match_cpu: no CUDA device, CPU-only run");
        return;
    }
    let x = cells(4, 64, 6);
    let cfg = MultiCropConfig::preset("dino-cpu-small").unwrap();
    let cpu = cfg.views(&x, &mut ChaCha8Rng::seed_from_u64(21)).unwrap();
    let gpu = cfg
        .views(
            &x.to_device(Device::Cuda(0)),
            &mut ChaCha8Rng::seed_from_u64(21),
        )
        .unwrap();
    for (i, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
        assert_eq!(b.device(), Device::Cuda(0));
        assert_close(
            &format!("view {i} CUDA vs CPU"),
            &b.to_device(Device::Cpu),
            a,
            1e-4,
        );
    }
}
