//! The learning-rate schedule: a pure function of the step.

use gradpool_core::spec::TrainConfig;

/// Learning rate used for step `step` (0-based).
///
/// Linear warm-up: `lr * (step + 1) / warmup_steps` for the first
/// `warmup_steps` steps, then cosine decay from `lr` to `min_lr`, reaching
/// `min_lr` at `steps`.
pub fn learning_rate(train: &TrainConfig, step: u64) -> f64 {
    if step < train.warmup_steps {
        return train.lr * (step + 1) as f64 / train.warmup_steps as f64;
    }
    let span = train.steps.saturating_sub(train.warmup_steps);
    if span == 0 {
        return train.min_lr;
    }
    let progress = ((step - train.warmup_steps) as f64 / span as f64).min(1.0);
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    train.min_lr + coeff * (train.lr - train.min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let t = TrainConfig {
            seed: 0,
            steps: 110,
            batch_size: 1,
            checkpoint_every: 10,
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            grad_clip: None,
        };
        assert!((learning_rate(&t, 0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&t, 9) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&t, 10) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&t, 60) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&t, 110) - 0.1).abs() < 1e-12);
    }
}
