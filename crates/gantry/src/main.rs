//! The `gantry` binary: parses arguments, sets up logging and progress, runs a command from
//! `gantry-ops` and prints its result. This is the only crate that prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod print;
mod progress;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use gantry_cli::{Cli, Command};
use gantry_ops::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The signal (SIGINT or SIGTERM) that interrupted gantry, or 0.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
/// How long an interrupted gantry waits for its command to wind down once its containers are
/// stopped, before it exits anyway.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

/// On SIGINT or SIGTERM: stop the containers gantry runs (they would outlive it otherwise), let
/// the command wind down (removing its temp files) and exit with 128 + the signal; with no
/// container running, or on a second signal, exit at once. Temps left by an exit are removed
/// by the next gantry.
fn handle_signals() {
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot handle SIGINT and SIGTERM: {e}");
            return;
        }
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let code = 128 + signal;
            if INTERRUPTED.swap(signal, Ordering::SeqCst) != 0
                || gantry_runtime::stop_running() == 0
            {
                std::process::exit(code);
            }
            // The command's containers are being stopped; its runtime calls return, and main
            // exits with `code`. Keep stopping any that started meanwhile; a second signal
            // (this loop) exits at once.
            std::thread::spawn(move || {
                let deadline = Instant::now() + INTERRUPT_GRACE;
                while Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                    gantry_runtime::stop_running();
                }
                std::process::exit(code);
            });
        }
    });
}

/// The exit code for an interrupted gantry (and says so), if it was interrupted.
fn interrupted() -> Option<ExitCode> {
    let signal = INTERRUPTED.load(Ordering::SeqCst);
    if signal == 0 {
        return None;
    }
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    eprintln!("error: interrupted by {name}; the running container was stopped");
    Some(ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);
    handle_signals();
    let result = run(cli);
    if let Some(code) = interrupted() {
        return code;
    }
    match result {
        Ok(code) => code,
        Err(err) => {
            // Broken pipe on stdout (`gantry ls … | head`) is not an error.
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let mut previous = err.to_string();
            eprintln!("error: {previous}");
            for cause in err.chain().skip(1) {
                let text = cause.to_string();
                // Many errors include their source in their own message ("cannot read X: No
                // such file or directory"); do not say it twice.
                if !previous.ends_with(&text) {
                    eprintln!("  caused by: {text}");
                }
                previous = text;
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let show_progress = !cli.global.quiet && std::io::stderr().is_terminal();
    let reporter = Arc::new(progress::Bars::new(show_progress, cli.global.quiet));
    let mut ctx = Context::new(cli.global.home, cli.global.jobs, reporter)?;
    ctx.registry = gantry_ops::RegistryOptions {
        insecure: cli.global.insecure_registries.clone(),
        ca_files: cli
            .global
            .registry_ca
            .iter()
            .map(|s| match s.split_once('=') {
                Some((h, f)) if !h.is_empty() && !f.is_empty() => {
                    Ok((h.to_owned(), ctx.abs(f.as_ref())))
                }
                _ => Err(anyhow::anyhow!(
                    "--registry-ca {s:?}: expected HOST=PEM_FILE"
                )),
            })
            .collect::<anyhow::Result<_>>()?,
        auth_file: cli.global.authfile.as_ref().map(|p| ctx.abs(p)),
        follow_base_name: cli.global.follow_base_name,
        timeout: cli.global.registry_timeout,
    };
    let size = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
        v.as_deref()
            .map(|v| match gantry_layer::limits::parse_size(v) {
                Ok(0) => Err(anyhow::anyhow!("{flag}: must be more than 0")),
                Ok(n) => Ok(n),
                Err(e) => Err(anyhow::anyhow!("{flag}: {e}")),
            })
            .transpose()
    };
    ctx.set_size_flags(gantry_ops::SizeFlags {
        max_layer_size: size("--max-layer-size", &cli.global.max_layer_size)?,
        max_image_size: size("--max-image-size", &cli.global.max_image_size)?,
        max_ratio: match cli.global.max_ratio {
            Some(0) => anyhow::bail!("--max-ratio: must be more than 0"),
            r => r,
        },
    });
    ctx.runtime.clone_from(&cli.global.runtime);
    ctx.cache_from.clone_from(&cli.global.cache_from);
    ctx.cache_to.clone_from(&cli.global.cache_to);
    match &cli.command {
        Command::Layer(args) => {
            let r = gantry_ops::layer::run(&ctx, args)?;
            print::layer(&r, cli.global.quiet)?;
        }
        Command::Image(args) => {
            let r = gantry_ops::image::run(&ctx, args)?;
            print::image(&r, cli.global.quiet)?;
        }
        Command::Inspect(args) => {
            let r = gantry_ops::inspect::run(&ctx, args)?;
            print::inspect(&r, args.json)?;
        }
        Command::Ls(args) => {
            let mut out = print::LsPrinter::new(args.json);
            gantry_ops::ls::run(&ctx, args, &mut |row| out.row(&row))?;
            out.finish()?;
        }
        Command::Build(args) => {
            let r = gantry_ops::build::run(&ctx, args)?;
            print::build(&r, args.json, cli.global.quiet)?;
        }
        Command::Clean(args) => {
            let r = gantry_ops::build::clean(&ctx, args)?;
            if !cli.global.quiet {
                for p in &r.removed {
                    eprintln!("removed {}", p.display());
                }
            }
        }
        Command::Lock(args) => {
            let r = gantry_ops::lock::run(&ctx, args)?;
            print::lock(&r, cli.global.quiet)?;
        }
        Command::Unpack(args) => {
            let stats = gantry_ops::run::unpack(&ctx, args)?;
            if !cli.global.quiet {
                eprintln!("unpacked {stats} into {}", args.dest.display());
            }
        }
        Command::Run(args) => {
            let code = gantry_ops::run::run(&ctx, args)?;
            return Ok(ExitCode::from(code));
        }
        Command::Push(args) => {
            let r = gantry_ops::push::run(&ctx, args)?;
            print::push(&r, args.json)?;
        }
        Command::Copy(args) => {
            let to = gantry_ops::transfer::copy(&ctx, args)?;
            if !cli.global.quiet {
                eprintln!("copied {} to {to}", args.source);
            }
        }
        Command::Export(args) => {
            let to = gantry_ops::transfer::export(&ctx, args)?;
            if !cli.global.quiet {
                eprintln!("exported {} to {to}", args.image);
            }
        }
        Command::Pull(args) => {
            let to = gantry_ops::transfer::pull(&ctx, args)?;
            println!("{to}");
        }
        Command::Login(args) => {
            let file = gantry_ops::login::login(&ctx, args, &mut std::io::stdin().lock())?;
            if !cli.global.quiet {
                eprintln!(
                    "logged in to {} (credentials in {})",
                    args.registry,
                    file.display()
                );
            }
        }
        Command::Logout(args) => {
            let (file, removed) = gantry_ops::login::logout(&ctx, args)?;
            if !cli.global.quiet {
                if removed {
                    eprintln!(
                        "removed the credentials for {} from {}",
                        args.registry,
                        file.display()
                    );
                } else {
                    eprintln!("no credentials for {} in {}", args.registry, file.display());
                }
            }
        }
        Command::Fsck(args) => {
            let r = gantry_ops::maintenance::fsck(&ctx, args.repair)?;
            print::fsck(&r)?;
            // With --repair, what was repaired is fine; anything left is not.
            if r.unrepaired() > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Gc(args) => {
            let r = gantry_ops::maintenance::gc(&ctx, args.dry_run, args.keep_cache)?;
            print::gc(&r, args.dry_run)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
