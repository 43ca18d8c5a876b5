//! Trains the reference GPT of `shared/bench/torch_gpt.py` and prints one
//! JSON line. Usage: `bench_train [STEPS] [WARMUP]` (default 100, 5).
//! Threads: `RAYON_NUM_THREADS`.

use gradpool_train::{bench, Device};

const DATA: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/tinyshakespeare.txt"
));

fn main() {
    let mut args = std::env::args().skip(1);
    let steps = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let warmup = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    match bench::train(
        bench::BenchConfig::Reference,
        steps,
        warmup,
        DATA,
        &Device::Cpu,
    ) {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
