//! Cold-start benchmark: each release function binary from `exec` to its first runtime poll
//! (`GET /2018-06-01/runtime/invocation/next`), next to a hello-world `lambda_runtime` binary
//! (`tests/hello-lambda`) measured in the same run, and the ratio of the two.
//!
//! ```text
//! cargo build --release -p console -p conversion-ingest -p oauth-callback -p segment-export
//! cargo build --release -p hello-lambda
//! set -a; . .local/stack.env; set +a
//! cargo run -p adsync-tests --bin coldstart_bench -- --rounds 50
//! ```
//!
//! The hello world is built by a cargo invocation of its own, as it would be in a project of its
//! own: built together with the functions, cargo unifies the features of their shared
//! dependencies and it grows (1.60 → 2.28 MB, fat LTO), which flatters the ratio.
//!
//! What runs: the native (x86_64 here) release binaries of `target/release` (`--bin-dir DIR`
//! for others), the arm64 ones `sam build` makes cannot be executed on this machine. Each is
//! started with `AWS_LAMBDA_RUNTIME_API` pointing at a minimal TCP listener in this process that
//! stamps the arrival of the first poll; the process is then killed. The functions get the
//! environment of this process (the stack's env file: table names, secret names, queue URLs),
//! with every `http://127.0.0.1:PORT` / `http://localhost:PORT` in it rewritten to a trap
//! listener that counts connections: a function that read anything over the network before its
//! first poll shows up as a trap hit (and, since the trap closes every connection at once, most
//! likely as a function that never polls). `--live` keeps the stack's endpoints instead (for
//! binaries that still read a secret at start-up). Rounds interleave the binaries, rotating the
//! order; `--warmup N` (default 3) rounds are dropped. The bench itself may be a debug build:
//! it only stamps times.
//!
//! Prints, per binary: median, p95, min (ms) and the ratio of its median and p95 to the
//! hello-world's, plus trap hits and the load average before and after.

use std::collections::HashMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FUNCTIONS: [&str; 4] = [
    "console",
    "conversion-ingest",
    "oauth-callback",
    "segment-export",
];
const HELLO: &str = "hello-lambda";
const POLL: &[u8] = b"GET /2018-06-01/runtime/invocation/next";

struct Args {
    rounds: usize,
    warmup: usize,
    bin_dir: PathBuf,
    live: bool,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 50,
        warmup: 3,
        bin_dir: adsync_tests::openapi::workspace_root().join("target/release"),
        live: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => a.rounds = value().parse().expect("--rounds N"),
            "--warmup" => a.warmup = value().parse().expect("--warmup N"),
            "--bin-dir" => a.bin_dir = PathBuf::from(value()),
            "--live" => a.live = true,
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// A listener that accepts and closes every connection, counting them.
fn trap() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("trap listener");
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (port, hits)
}

/// `value` with every local `http://127.0.0.1:PORT` / `http://localhost:PORT` sent to `port`.
fn rewrite_local_urls(value: &str, port: u16) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = ["://127.0.0.1:", "://localhost:"]
        .iter()
        .filter_map(|h| rest.find(h).map(|i| (i, h.len())))
        .min()
    {
        let (at, len) = i;
        out.push_str(&rest[..at + len]);
        rest = &rest[at + len..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(&port.to_string());
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// The environment of one run: this process's (the stack's), local URLs to the trap unless
/// `live`, and what the Lambda service sets.
fn child_env(name: &str, runtime_port: u16, trap_port: Option<u16>) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = std::env::vars()
        .map(|(k, v)| match trap_port {
            Some(p) => (k, rewrite_local_urls(&v, p)),
            None => (k, v),
        })
        .collect();
    env.remove("RUST_LOG");
    for (k, v) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ] {
        env.entry(k.into()).or_insert_with(|| v.into());
    }
    for (k, v) in [
        (
            "AWS_LAMBDA_RUNTIME_API",
            format!("127.0.0.1:{runtime_port}"),
        ),
        ("AWS_LAMBDA_FUNCTION_NAME", name.to_string()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "coldstart".into()),
    ] {
        env.insert(k.into(), v);
    }
    env
}

/// Stamps the arrival of the first poll on `listener`. The connection is kept open (sent along)
/// until the process is killed: closing it would make the runtime client exit with an error.
type Poll = Result<(Instant, TcpStream), String>;

fn await_poll(listener: TcpListener, tx: mpsc::Sender<Poll>) {
    std::thread::spawn(move || {
        let got = (|| {
            let (mut s, _): (TcpStream, _) = listener.accept().map_err(|e| e.to_string())?;
            let mut buf = Vec::with_capacity(512);
            let mut chunk = [0u8; 512];
            while !buf.windows(2).any(|w| w == b"\r\n") {
                let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("connection closed before a request line".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let at = Instant::now();
            match buf.starts_with(POLL) {
                true => Ok((at, s)),
                false => Err(format!(
                    "first request was {:?}",
                    String::from_utf8_lossy(&buf)
                )),
            }
        })();
        let _ = tx.send(got);
    });
}

/// One start of `bin`: exec → first poll.
fn one_start(bin: &Path, name: &str, trap_port: Option<u16>) -> Result<Duration, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    await_poll(listener, tx);
    let env = child_env(name, port, trap_port);
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let got = wait_poll(&rx, &mut child);
    let _ = child.kill();
    let _ = child.wait();
    if got.is_err() {
        // Unblock the accept thread.
        let _ = TcpStream::connect(("127.0.0.1", port));
    }
    got.map(|(at, _conn)| at - t0)
        .map_err(|e| format!("{name}: {e}"))
}

fn wait_poll(rx: &mpsc::Receiver<Poll>, child: &mut Child) -> Poll {
    let started = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(got) => return got,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("listener gone".into()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            if let Ok(got) = rx.try_recv() {
                return got;
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("exited ({status}) before polling: {err}"));
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err("no poll within 20 s".into());
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let a = args();
    let (trap_port, hits) = trap();
    let trap_port = (!a.live).then_some(trap_port);
    let (names, missing): (Vec<&str>, Vec<&str>) = std::iter::once(HELLO)
        .chain(FUNCTIONS)
        .partition(|n| a.bin_dir.join(n).is_file());
    if !missing.is_empty() {
        println!("not built (skipped): {missing:?}");
    }
    let mut times: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut trap_hits: HashMap<&str, usize> = HashMap::new();
    let load_before = loadavg();
    for round in 0..a.warmup + a.rounds {
        for k in 0..names.len() {
            let name = names[(round + k) % names.len()];
            let before = hits.load(Ordering::SeqCst);
            let took =
                one_start(&a.bin_dir.join(name), name, trap_port).unwrap_or_else(|e| panic!("{e}"));
            *trap_hits.entry(name).or_default() += hits.load(Ordering::SeqCst) - before;
            if round >= a.warmup {
                times
                    .entry(name)
                    .or_default()
                    .push(took.as_secs_f64() * 1e3);
            }
        }
    }
    println!(
        "cold start, exec -> first runtime poll: {} rounds (+{} warm-up), binaries in {}, \
         endpoints {}; load average before {load_before}, after {}",
        a.rounds,
        a.warmup,
        a.bin_dir.display(),
        if a.live {
            "live (the stack's)"
        } else {
            "on a trap port"
        },
        loadavg()
    );
    report(&names, &mut times, &trap_hits, &a.bin_dir);
}

fn report(
    names: &[&str],
    times: &mut HashMap<&str, Vec<f64>>,
    trap_hits: &HashMap<&str, usize>,
    bin_dir: &Path,
) {
    for v in times.values_mut() {
        v.sort_by(f64::total_cmp);
    }
    // Without the hello-world binary the ratios are NaN.
    let (h50, h95) = match times.get(HELLO) {
        Some(h) => (percentile(h, 0.5), percentile(h, 0.95)),
        None => (f64::NAN, f64::NAN),
    };
    println!(
        "{:<18} {:>9} {:>8} {:>8} {:>8} {:>12} {:>9} {:>10}",
        "binary", "size MB", "p50 ms", "p95 ms", "min ms", "p50 ratio", "p95 ratio", "trap hits"
    );
    for name in names {
        let t = &times[name];
        let (p50, p95) = (percentile(t, 0.5), percentile(t, 0.95));
        let size = std::fs::metadata(bin_dir.join(name))
            .map(|m| m.len() as f64 / 1e6)
            .unwrap_or(f64::NAN);
        println!(
            "{name:<18} {size:>9.2} {p50:>8.2} {p95:>8.2} {:>8.2} {:>11.2}x {:>8.2}x {:>10}",
            t[0],
            p50 / h50,
            p95 / h95,
            trap_hits.get(name).copied().unwrap_or(0)
        );
    }
}
