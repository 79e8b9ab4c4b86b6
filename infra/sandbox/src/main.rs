//! `amazon-sandbox --port N`: serves the sandbox on 127.0.0.1 (docs/sandbox.md).

use std::io::Write;
use std::process::ExitCode;

use adsync_sandbox::{Sandbox, serve};

const DEFAULT_PORT: u16 = 9400;

fn port_from_args() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    let mut port = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" | "-p" => {
                let v = args.next().ok_or("--port needs a value")?;
                port = Some(
                    v.parse::<u16>()
                        .map_err(|_| format!("invalid port {v:?}"))?,
                );
            }
            s if s.starts_with("--port=") => {
                let v = &s["--port=".len()..];
                port = Some(
                    v.parse::<u16>()
                        .map_err(|_| format!("invalid port {v:?}"))?,
                );
            }
            "--help" | "-h" => {
                return Err(
                    "usage: amazon-sandbox [--port N]   (or SANDBOX_PORT; default 9400)".into(),
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(p) = port {
        return Ok(p);
    }
    match std::env::var("SANDBOX_PORT") {
        Ok(v) if !v.is_empty() => v
            .parse::<u16>()
            .map_err(|_| format!("SANDBOX_PORT is not a port: {v:?}")),
        _ => Ok(DEFAULT_PORT),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let port = match port_from_args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("amazon-sandbox: cannot bind 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("amazon-sandbox listening on http://127.0.0.1:{port}");
    let _ = std::io::stdout().flush();
    serve(listener, Sandbox::new(), shutdown_signal()).await;
    eprintln!("amazon-sandbox: shutting down");
    ExitCode::SUCCESS
}
