//! Schedules of self-supervised pre-training as pure functions of the step.
//!
//! The shape is the one SwAV (Caron et al. 2020) and DINO (Caron et al. 2021) use
//! for learning rate, weight decay and teacher momentum: an optional linear
//! warm-up that reaches the base value on its last step (`linspace(start, base,
//! W)`), followed by a half cosine over the remaining `N = T − W` steps,
//!
//! ```text
//! v(i) = final + ½ (base − final) (1 + cos(π (i − W) / N)),   W ≤ i < T
//! ```
//!
//! which starts at `base` and approaches, without reaching, `final` on the last
//! step. Steps past `T` stay at `final`. The learning rate is scaled linearly with
//! the batch size, `lr = base_lr · batch / 256` (Goyal et al. 2017, as SimCLR,
//! SwAV and DINO do). tch has no LR schedulers: the training loop evaluates these
//! functions each step and sets the optimiser's rate.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Linear warm-up then half cosine, as a value to evaluate per step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// Value at the end of warm-up (or at step 0 without warm-up).
    pub base: f64,
    /// Value the cosine decays towards.
    pub final_value: f64,
    /// Steps of the linear warm-up (0 for none).
    pub warmup_steps: u64,
    /// Value at step 0 of the warm-up.
    pub warmup_start: f64,
    /// Total steps, warm-up included (epochs × iterations per epoch).
    pub total_steps: u64,
}

impl CosineSchedule {
    /// A schedule without warm-up (weight decay, teacher momentum).
    pub fn cosine(base: f64, final_value: f64, total_steps: u64) -> Self {
        CosineSchedule {
            base,
            final_value,
            warmup_steps: 0,
            warmup_start: base,
            total_steps,
        }
    }

    /// Checks that the numbers describe a schedule.
    pub fn validate(&self) -> Result<()> {
        for (arg, v) in [
            ("base", self.base),
            ("final_value", self.final_value),
            ("warmup_start", self.warmup_start),
        ] {
            if !v.is_finite() {
                return Err(Error::invalid(arg, format!("{v} is not finite")));
            }
        }
        if self.total_steps == 0 {
            return Err(Error::invalid("total_steps", "must be at least 1"));
        }
        if self.warmup_steps > self.total_steps {
            return Err(Error::invalid(
                "warmup_steps",
                format!(
                    "{} warm-up steps exceed the {} total steps",
                    self.warmup_steps, self.total_steps
                ),
            ));
        }
        Ok(())
    }

    /// The value at `step` (0-based).
    pub fn value(&self, step: u64) -> f64 {
        warmup_cosine(
            step,
            self.base,
            self.final_value,
            self.total_steps,
            self.warmup_steps,
            self.warmup_start,
        )
    }
}

/// Linear warm-up from `warmup_start` to `base` over `warmup_steps` steps, then a
/// half cosine from `base` towards `final_value` until `total_steps`.
pub fn warmup_cosine(
    step: u64,
    base: f64,
    final_value: f64,
    total_steps: u64,
    warmup_steps: u64,
    warmup_start: f64,
) -> f64 {
    let warmup = warmup_steps.min(total_steps);
    if step < warmup {
        // linspace(start, base, W): both ends included, so W = 1 gives the start value.
        if warmup == 1 {
            return warmup_start;
        }
        let t = step as f64 / (warmup - 1) as f64;
        return warmup_start + (base - warmup_start) * t;
    }
    let cosine_steps = total_steps - warmup;
    if cosine_steps == 0 || step >= total_steps {
        return final_value;
    }
    let t = (step - warmup) as f64 / cosine_steps as f64;
    final_value + 0.5 * (base - final_value) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Learning rate of a step: linear warm-up from 0 to `base_lr`, then cosine to `final_lr`.
pub fn learning_rate(
    step: u64,
    base_lr: f64,
    final_lr: f64,
    warmup_steps: u64,
    total_steps: u64,
) -> f64 {
    warmup_cosine(step, base_lr, final_lr, total_steps, warmup_steps, 0.0)
}

/// Weight decay of a step: cosine from `start` to `end` without warm-up (DINO: 0.04 → 0.4).
pub fn weight_decay(step: u64, start: f64, end: f64, total_steps: u64) -> f64 {
    warmup_cosine(step, start, end, total_steps, 0, start)
}

/// EMA momentum of the teacher at a step: cosine from `base` (DINO: 0.996) to 1.
pub fn teacher_momentum(step: u64, base: f64, total_steps: u64) -> f64 {
    warmup_cosine(step, base, 1.0, total_steps, 0, base)
}

/// DINO's teacher temperature at an epoch: linear from `warmup_start` (0.04) to
/// `final_value` (0.07) over `warmup_epochs` epochs (both ends included, as
/// `linspace`), then constant.
pub fn teacher_temperature(
    epoch: u64,
    warmup_start: f64,
    final_value: f64,
    warmup_epochs: u64,
) -> f64 {
    if epoch >= warmup_epochs {
        return final_value;
    }
    if warmup_epochs == 1 {
        return warmup_start;
    }
    warmup_start + (final_value - warmup_start) * epoch as f64 / (warmup_epochs - 1) as f64
}

/// Linear scaling rule: `base_lr · batch_size / 256`.
pub fn scaled_learning_rate(base_lr: f64, batch_size: usize) -> f64 {
    base_lr * batch_size as f64 / 256.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn warmup_is_linspace_then_cosine() {
        // W = 5, T = 15: warm-up 0, .25, .5, .75, 1 (×base 0.4), cosine over N = 10.
        let s = CosineSchedule {
            base: 0.4,
            final_value: 0.0,
            warmup_steps: 5,
            warmup_start: 0.0,
            total_steps: 15,
        };
        s.validate().unwrap();
        for (i, v) in [0.0, 0.1, 0.2, 0.3, 0.4].into_iter().enumerate() {
            close(s.value(i as u64), v);
        }
        close(s.value(5), 0.4); // cosine starts at base
                                // step 10: t = 1/2, 0.2 · (1 + cos(π/2)) = 0.2
        close(s.value(10), 0.2);
        // step 14: t = 9/10, 0.2 · (1 + cos(0.9π)) = 0.2 · (1 − 0.951056516…)
        close(s.value(14), 0.2 * (1.0 - 0.951_056_516_295_153_6));
        close(s.value(15), 0.0);
        close(s.value(1000), 0.0);
    }

    #[test]
    fn learning_rate_hand_values() {
        // base 1.0, final 0.1, warm-up 2 of 6 steps: 0, 1, then 0.1 + 0.45 (1 + cos(π t/4)).
        close(learning_rate(0, 1.0, 0.1, 2, 6), 0.0);
        close(learning_rate(1, 1.0, 0.1, 2, 6), 1.0);
        close(learning_rate(2, 1.0, 0.1, 2, 6), 1.0);
        close(
            learning_rate(3, 1.0, 0.1, 2, 6),
            0.1 + 0.45 * (1.0 + std::f64::consts::FRAC_1_SQRT_2),
        );
        close(learning_rate(4, 1.0, 0.1, 2, 6), 0.55);
        close(
            learning_rate(5, 1.0, 0.1, 2, 6),
            0.1 + 0.45 * (1.0 - std::f64::consts::FRAC_1_SQRT_2),
        );
    }

    #[test]
    fn weight_decay_and_momentum_hand_values() {
        // DINO: 0.04 → 0.4 over 4 steps: 0.04, 0.22 − 0.18·cos(π/4)…
        close(weight_decay(0, 0.04, 0.4, 4), 0.04);
        close(weight_decay(2, 0.04, 0.4, 4), 0.22);
        close(
            weight_decay(1, 0.04, 0.4, 4),
            0.4 - 0.18 * (1.0 + std::f64::consts::FRAC_1_SQRT_2),
        );
        close(teacher_momentum(0, 0.996, 100), 0.996);
        close(teacher_momentum(50, 0.996, 100), 0.998);
        close(teacher_momentum(100, 0.996, 100), 1.0);
    }

    #[test]
    fn teacher_temperature_hand_values() {
        // linspace(0.04, 0.07, 4) = 0.04, 0.05, 0.06, 0.07; then 0.07.
        close(teacher_temperature(0, 0.04, 0.07, 4), 0.04);
        close(teacher_temperature(1, 0.04, 0.07, 4), 0.05);
        close(teacher_temperature(2, 0.04, 0.07, 4), 0.06);
        close(teacher_temperature(3, 0.04, 0.07, 4), 0.07);
        close(teacher_temperature(10, 0.04, 0.07, 4), 0.07);
        close(teacher_temperature(0, 0.04, 0.07, 0), 0.07);
        close(teacher_temperature(0, 0.04, 0.07, 1), 0.04);
    }

    #[test]
    fn lr_scaling_and_validation() {
        close(scaled_learning_rate(0.3, 512), 0.6);
        close(scaled_learning_rate(0.0005, 64), 0.000125);
        assert!(CosineSchedule::cosine(1.0, 0.0, 0).validate().is_err());
        let mut s = CosineSchedule::cosine(1.0, 0.0, 10);
        s.warmup_steps = 11;
        assert!(s.validate().is_err());
        s.warmup_steps = 1;
        close(s.value(0), 1.0);
    }
}
