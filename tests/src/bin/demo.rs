//! `cargo run -p adsync-tests --bin demo [STEP…]`: walks through adsync against the running local
//! stack (started by `infra/scripts/demo.sh`), one step per feature, and prints what happened.
//! With step names as arguments, only those steps run (in the registered order).

use adsync_tests::demo::{Demo, steps};
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    // The environment is read (and .local/stack.env loaded) before any thread starts.
    let demo = match Demo::from_env() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let only: Vec<String> = std::env::args().skip(1).collect();
    let all = steps();
    if let Some(unknown) = only
        .iter()
        .find(|n| !all.iter().any(|s| s.name == n.as_str()))
    {
        let names: Vec<_> = all.iter().map(|s| s.name).collect();
        eprintln!(
            "demo: unknown step {unknown:?}; steps: {}",
            names.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(demo, all, only))
}

async fn run(mut demo: Demo, all: Vec<adsync_tests::demo::Step>, only: Vec<String>) -> ExitCode {
    let started = Instant::now();
    println!("adsync demo against {}", demo.functions_url);
    let selected: Vec<_> = all
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|n| n == s.name))
        .collect();
    let total = selected.len();
    for (i, step) in selected.into_iter().enumerate() {
        println!("\n[{}/{total}] {}", i + 1, step.name);
        let t = Instant::now();
        if let Err(e) = (step.run)(&mut demo).await {
            println!("    \u{2717} {e}");
            println!(
                "\ndemo FAILED at step {:?} after {:.1}s ({} checks passed before it)",
                step.name,
                started.elapsed().as_secs_f64(),
                demo.checks()
            );
            return ExitCode::FAILURE;
        }
        println!(
            "    step {} done in {:.1}s",
            step.name,
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "\ndemo OK: {total} steps, {} checks passed in {:.1}s",
        demo.checks(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
