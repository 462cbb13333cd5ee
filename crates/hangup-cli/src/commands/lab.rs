//! `hangup lab`: the fault lab of SPEC §7 (the work is in the `hangup-lab` crate), and
//! `hangup lab peer`, the raw-socket peer it runs inside its namespaces.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use hangup_lab::{format_duration, LabConfig, LabError, Setup};

use crate::args::{LabArgs, LabCommand};

pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(LabCommand::Peer(peer)) => {
            let payload = match &peer.payload_file {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("cannot read --payload-file {}", path.display()))?,
                None => Vec::new(),
            };
            let options = hangup_lab::PeerOptions {
                device: peer.device,
                heartbeat: peer.heartbeat,
                payload,
            };
            hangup_lab::run_peer(peer.connect, peer.mode, &options)?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(LabCommand::Sockwatch(watch)) => {
            hangup_lab::run_sockwatch(watch.port)?;
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    if args.cleanup {
        return cleanup();
    }
    if args.dead_after < Duration::from_secs(1) {
        bail!(
            "--dead-after {}: the lab needs at least 1s (the server's minimum)",
            format_duration(args.dead_after)
        );
    }
    hangup_lab::preflight()?;
    hangup_lab::install_interrupt_handler().context("could not install the Ctrl-C handler")?;
    let hangup = std::env::current_exe().context("cannot find the hangup executable")?;
    let mut config = LabConfig::new(hangup, args.dead_after);
    if let Some(factor) = args.time_scale {
        let scale = hangup_lab::TimeScale { factor };
        config.time_scale = Some(scale);
        config.cap = config.cap.max(scale.cap());
        eprintln!(
            "hangup lab: TCP timers scaled 1/{factor} in the namespaces (tcp_keepalive_time {} s, \
             intvl {} s, probes 9, tcp_retries2 {} → {}); every time below is SCALED",
            scale.keepalive_time_s(),
            scale.keepalive_intvl_s(),
            scale.retries2(),
            format_duration(hangup_lab::retries_timeout(scale.retries2())),
        );
    }
    if let Some(cap) = args.cap {
        config.cap = cap;
    }
    if args.quick {
        config.setups = vec![Setup::Full];
    } else if !args.setup.is_empty() {
        config.setups = args.setup;
    }
    if let Some(command) = args.target {
        let read = |flag: &str, path: &Option<std::path::PathBuf>| -> anyhow::Result<_> {
            path.as_ref()
                .map(|path| {
                    std::fs::read(path)
                        .with_context(|| format!("cannot read {flag} {}", path.display()))
                })
                .transpose()
        };
        config.target = Some(hangup_lab::Target {
            command,
            port: args.port.context("--target needs --port")?,
            payload: read("--payload", &args.payload)?.unwrap_or_default(),
            payload_streaming: read("--payload-streaming", &args.payload_streaming)?,
            payload_upload: read("--payload-upload", &args.payload_upload)?,
        });
        config.setups = vec![Setup::Target];
        config.scenarios = hangup_lab::Scenario::TARGET.to_vec();
    }
    if !args.scenario.is_empty() {
        config.scenarios = args.scenario;
    }
    config.progress = true;
    config.command = std::iter::once("hangup".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    config.fail_after_start = args.fail_after_start;
    eprintln!(
        "hangup lab: {} scenarios × {} set-ups, D = {}, cap {} per cell (namespaces {}-*)",
        config.scenarios.len(),
        config.setups.len(),
        format_duration(config.dead_after),
        format_duration(config.cap),
        hangup_lab::run_prefix(),
    );
    let report = match hangup_lab::run(&config) {
        Ok(report) => report,
        Err(LabError::Interrupted) => {
            eprintln!("hangup lab: interrupted; everything it created was removed");
            return Ok(ExitCode::from(130));
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(scale) = report.time_scale {
        println!(
            "SCALED: TCP timers divided by {} in the namespaces; multiply times by {} for Linux's defaults",
            scale.factor, scale.factor
        );
    }
    println!("{}", report.table());
    for remark in report.remarks() {
        println!("- {remark}");
    }
    println!(
        "\n{}; {}; took {}",
        report.machine,
        match (&report.target, report.heartbeat) {
            (Some(target), _) => format!("target: {} (port {})", target.command, target.port),
            (None, Some(h)) => format!("full: sessions with heartbeat {}", format_duration(h)),
            (None, None) => "full: no sessions in this build".to_owned(),
        },
        format_duration(report.took),
    );
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("hangup lab: JSON written to {}", path.display());
    }
    if let Some(path) = &args.svg {
        hangup_lab::write_svg(&report, path)?;
        eprintln!("hangup lab: chart written to {}", path.display());
    }
    if config.target.is_some() {
        let missed = report.cells.iter().filter(|c| !c.meets_expectation).count();
        println!(
            "target: {} of {} cells within the bounds SPEC §7 sets for hangup's full policy",
            report.cells.len() - missed,
            report.cells.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let full: Vec<_> = report
        .cells
        .iter()
        .filter(|c| c.setup == Setup::Full)
        .collect();
    if full.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let missed = full.iter().filter(|c| !c.meets_expectation).count();
    if report.full_policy_holds() {
        println!(
            "full policy: every cell that ran met SPEC §7 ({} of {} ran)",
            full.len() - missed,
            full.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "full policy: {missed} of {} cells missed SPEC §7",
            full.len()
        );
        Ok(ExitCode::from(1))
    }
}

fn cleanup() -> anyhow::Result<ExitCode> {
    let cleanup = hangup_lab::cleanup_leftovers()?;
    for name in &cleanup.namespaces {
        println!("removed namespace {name}");
    }
    for pid in &cleanup.processes {
        println!("killed leftover lab process {pid}");
    }
    for dir in &cleanup.directories {
        println!("removed {}", dir.display());
    }
    for name in &cleanup.kept_live {
        println!("kept namespace {name}: its lab is still running");
    }
    if cleanup.namespaces.is_empty()
        && cleanup.processes.is_empty()
        && cleanup.directories.is_empty()
    {
        println!("nothing to clean up");
    }
    Ok(ExitCode::SUCCESS)
}
