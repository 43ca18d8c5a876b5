//! Every parser gradpool runs on bytes it did not make, as a function of
//! those bytes that must never panic, hang or allocate without bound: the
//! fuzz targets.
//!
//! - [`job_spec`]: a customer's TOML job spec, and the model it sizes.
//! - [`checkpoint_inspect`]: the pool's check of a committed checkpoint.
//! - [`checkpoint_load`]: the trainer's loader of a start checkpoint.
//! - [`wire_json`]: every JSON body a client may send to `/v1`, chosen by
//!   the first byte.
//! - [`monero_address`]: a payout or withdrawal address.
//!
//! `fuzz/` runs them under libFuzzer (`cargo fuzz`, coverage-guided, on
//! the stable toolchain); `tests/regressions.rs` runs every input in
//! `fuzz/regressions/<target>/` through them in the ordinary test suite,
//! so a crash once found stays fixed. Each target also checks what must
//! hold of what it accepts (a parsed value survives a round trip), so a
//! wrong answer counts as a crash too.

use gradpool_core::model::{DataShape, ModelMeta};
use gradpool_core::wire;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A fuzz target: a function of untrusted bytes that must not panic.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/` and the regression tests call them.
pub const TARGETS: [(&str, Target); 5] = [
    ("job_spec", job_spec),
    ("checkpoint_inspect", checkpoint_inspect),
    ("checkpoint_load", checkpoint_load),
    ("wire_json", wire_json),
    ("monero_address", monero_address),
];

/// A job spec: parsed and validated; if accepted, its segments and the
/// memory its model would take on a text of 65 characters.
pub fn job_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = gradpool_core::JobSpec::from_toml_str(text) else {
        return;
    };
    let n = spec.segment_count();
    assert!(n >= 1);
    let (start, end) = spec.segment_steps(n - 1);
    assert!(start < end && end == spec.train.steps);
    let _ = spec.flops_per_step();
    for shape in [
        DataShape::Text { vocab_size: 65 },
        DataShape::Csv {
            inputs: 4,
            classes: 3,
        },
    ] {
        if let Ok(model) = ModelMeta::of(&spec, shape) {
            let m = model.memory(spec.train.batch_size);
            assert!(m.total_bytes >= m.weights_bytes);
        }
    }
}

/// The model the checkpoint targets expect.
fn model() -> ModelMeta {
    ModelMeta::Gpt {
        n_layer: 1,
        n_head: 1,
        n_embd: 4,
        block_size: 4,
        vocab_size: 3,
    }
}

/// The pool's look at a committed checkpoint.
pub fn checkpoint_inspect(data: &[u8]) {
    let _ = gradpool_core::checkpoint::inspect(data, &model(), 10);
}

/// The trainer's loader of a checkpoint, for a tiny GPT on the text "abc".
pub fn checkpoint_load(data: &[u8]) {
    let Ok(spec) = gradpool_core::JobSpec::from_toml_str(LOAD_SPEC) else {
        panic!("the fuzz target's own spec must parse");
    };
    let Ok(dataset) = gradpool_train::Dataset::from_bytes(&spec, b"abcabcabcabc") else {
        panic!("the fuzz target's own data must load");
    };
    let _ = gradpool_train::checkpoint::check_bytes(&spec, &dataset, data);
}

/// The spec of [`checkpoint_load`]: a tiny GPT on a text of three characters.
pub const LOAD_SPEC: &str = r#"
name = "fuzz"
[model]
kind = "gpt"
n_layer = 1
n_head = 1
n_embd = 4
block_size = 4
[data]
format = "text"
# The seed checkpoint in fuzz/regressions was written holding nothing out.
eval_fraction = 0.0
[train]
seed = 1
steps = 20
batch_size = 1
checkpoint_every = 10
lr = 0.001
"#;

/// Parses `data` as `T`; what parses must serialise and parse back equal.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
    data: &[u8],
) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let text = serde_json::to_vec(&value).expect("a parsed body serialises");
    let again: T = serde_json::from_slice(&text).expect("a serialised body parses");
    assert_eq!(again, value);
    Some(value)
}

/// Parses `data` as `T` and serialises it again (for bodies without
/// equality).
fn parse<T: DeserializeOwned + Serialize>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    serde_json::to_vec(&value).expect("a parsed body serialises");
    Some(value)
}

/// Every body of `/v1` a client sends, chosen by the first byte; the
/// checks the pool runs on it run too.
pub fn wire_json(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 15 {
        0 => drop(parse::<wire::CreateAccount>(body)),
        1 => drop(parse::<wire::SubmitJob>(body)),
        2 => drop(parse::<wire::Register>(body)),
        3 => {
            if let Some(hb) = parse::<wire::Heartbeat>(body) {
                let _ = hb.check();
            }
        }
        4 => {
            if let Some(p) = parse::<wire::Progress>(body) {
                let _ = p.check();
            }
        }
        5 => {
            if let Some(c) = parse::<wire::Commit>(body) {
                let _ = c.check();
                let _ = c.commitment.verify();
                let _ = c.commitment.signer();
            }
        }
        6 => drop(parse::<wire::TaskFailed>(body)),
        7 => {
            if let Some(r) = round_trip::<gradpool_core::SignedReplay>(body) {
                let _ = r.report.check();
                let _ = r.verify();
            }
        }
        8 => drop(parse::<wire::Faucet>(body)),
        9 => drop(parse::<wire::Withdraw>(body)),
        10 => drop(parse::<wire::SignedNonce>(body)),
        11 => drop(parse::<wire::StakeRequest>(body)),
        12 => drop(parse::<wire::Book>(body)),
        13 => {
            if let Some(c) = parse::<wire::OuterCommit>(body) {
                let _ = c.commitment.verify();
                let _ = c.commitment.signer();
            }
        }
        _ => drop(parse::<gradpool_core::proof::ProofAnswer>(body)),
    }
}

/// A Monero address: what parses prints back as itself.
pub fn monero_address(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(address) = gradpool_monero::Address::parse(text) {
        assert_eq!(address.to_string(), text.trim());
        let _ = address.expect_network(gradpool_monero::Network::Mainnet);
    }
}
