//! The report: a table for the terminal and JSON for files (the chart is in
//! `chart.rs`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cell::{Cell, Outcome};
use crate::error::LabError;
use crate::run::Capabilities;
use crate::scenario::Scenario;
use crate::setup::Setup;

/// Everything one run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The command line that made it.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// The liveness budget D.
    pub dead_after: Duration,
    /// How long each cell waited for a detection.
    pub cap: Duration,
    /// The heartbeat the `full` client used, if the binary has sessions.
    pub heartbeat: Option<Duration>,
    /// What the binary under test supports.
    pub capabilities: Capabilities,
    /// When the run started (Unix ns).
    pub started_unix_ns: u64,
    /// How long it took.
    pub took: Duration,
    /// The rows, in order.
    pub scenarios: Vec<Scenario>,
    /// The columns, in order.
    pub setups: Vec<Setup>,
    /// Every cell, row by row.
    pub cells: Vec<Cell>,
    /// The third-party server of a `--target` run.
    pub target: Option<crate::run::Target>,
    /// `--time-scale`: the namespaces' TCP timers were divided (every time is scaled).
    pub time_scale: Option<crate::timescale::TimeScale>,
}

/// The machine a run was made on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// CPUs available to the lab.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// `release` or `debug` build of the lab (and of the `hangup` it runs).
    pub build: &'static str,
}

impl Machine {
    /// Reads /proc.
    pub fn describe() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} CPUs ({}), Linux {}, {} build",
            self.cpus, self.cpu, self.kernel, self.build
        )
    }
}

/// `0.42 ms`, `12.3 ms`, `153 ms`, `2.04 s`, `11 s`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if duration.subsec_millis() == 0 && duration.as_secs() >= 10 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// The short text of a cell in the table.
pub fn cell_text(cell: &Cell) -> String {
    let mark = if cell.meets_expectation { "✓" } else { "✗" };
    match &cell.outcome {
        Outcome::Detected { cause, after, .. } => {
            format!("{cause} {} {mark}", format_duration(*after))
        }
        Outcome::NotDetected { within } => {
            format!("not detected in {} {mark}", format_duration(*within))
        }
        Outcome::Kept { .. } => format!("kept {mark}"),
        Outcome::Broken { .. } => format!("broken {mark}"),
        Outcome::Skipped { .. } => "skipped".into(),
        Outcome::Error { .. } => "error ✗".into(),
    }
}

/// One line per finished cell, for the progress output.
pub fn cell_line(cell: &Cell) -> String {
    let mut line = format!(
        "{:<22} {:<24} {}",
        cell.scenario.name(),
        cell.setup.name(),
        cell_text(cell)
    );
    for check in cell.checks.iter().filter(|c| !c.passed) {
        let _ = write!(line, "; failed: {}", check.name);
    }
    match &cell.outcome {
        Outcome::Skipped { reason } => {
            let _ = write!(line, " ({reason})");
        }
        Outcome::Error { message } | Outcome::Broken { detail: message } => {
            let first = message.lines().next().unwrap_or("");
            let _ = write!(line, " ({first})");
        }
        _ => {}
    }
    line
}

impl Report {
    /// The cell of `scenario` × `setup`, if it ran.
    pub fn cell(&self, scenario: Scenario, setup: Setup) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.scenario == scenario && c.setup == setup)
    }

    /// Whether every cell of the `full` set-up that ran meets its expectation.
    pub fn full_policy_holds(&self) -> bool {
        self.cells
            .iter()
            .filter(|c| c.setup == Setup::Full)
            .filter(|c| !matches!(c.outcome, Outcome::Skipped { .. }))
            .all(|c| c.meets_expectation)
    }

    /// The matrix as a text table (Markdown-compatible).
    pub fn table(&self) -> String {
        let mut header = vec!["scenario".to_owned()];
        header.extend(self.setups.iter().map(|s| s.name().to_owned()));
        header.push("expected with full".to_owned());
        let mut rows = vec![header];
        for &scenario in &self.scenarios {
            let mut row = vec![scenario.name().to_owned()];
            for &setup in &self.setups {
                row.push(
                    self.cell(scenario, setup)
                        .map_or_else(String::new, cell_text),
                );
            }
            row.push(scenario.expectation().spec.to_owned());
            rows.push(row);
        }
        let columns = rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (n, row) in rows.iter().enumerate() {
            out.push('|');
            for (cell, width) in row.iter().zip(&widths) {
                let pad = width - cell.chars().count();
                let _ = write!(out, " {cell}{} |", " ".repeat(pad));
            }
            out.push('\n');
            if n == 0 {
                out.push('|');
                for width in &widths {
                    let _ = write!(out, "{}|", "-".repeat(width + 2));
                }
                out.push('\n');
            }
        }
        out
    }

    /// Failed checks, errors and notes, one line each, for below the table.
    pub fn remarks(&self) -> Vec<String> {
        let mut remarks = Vec::new();
        for cell in &self.cells {
            let at = format!("{} × {}", cell.scenario, cell.setup);
            for check in cell.checks.iter().filter(|c| !c.passed) {
                remarks.push(format!("{at}: check failed: {}", check.name));
            }
            match &cell.outcome {
                Outcome::Error { message } => remarks.push(format!("{at}: error: {message}")),
                Outcome::Broken { detail } => remarks.push(format!("{at}: {detail}")),
                Outcome::Skipped { reason } => remarks.push(format!("{at}: skipped: {reason}")),
                _ => {}
            }
            for note in &cell.notes {
                remarks.push(format!("{at}: {note}"));
            }
        }
        remarks
    }

    /// The report as JSON (schema: see LAB.md).
    pub fn to_json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let setups: Vec<Value> = self
            .setups
            .iter()
            .map(|s| {
                json!({
                    "name": s.name(),
                    "flags": s.liveness_flags(),
                    "sessions": s.sessions() && self.capabilities.sessions,
                })
            })
            .collect();
        let scenarios: Vec<Value> = self
            .scenarios
            .iter()
            .map(|s| {
                let e = s.expectation();
                json!({
                    "name": s.name(),
                    "fault": s.fault(),
                    "watcher": s.watcher(),
                    "expected": {
                        "survives": e.survives,
                        "causes": e.causes,
                        "spec": e.spec,
                    },
                })
            })
            .collect();
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|c| {
                let mut cell = json!({
                    "scenario": c.scenario.name(),
                    "setup": c.setup.name(),
                    "outcome": c.outcome.kind(),
                    "limit_ms": ms(c.limit),
                    "meets_expectation": c.meets_expectation,
                    "checks": c.checks.iter().map(|k| json!({"name": k.name, "passed": k.passed})).collect::<Vec<_>>(),
                    "notes": c.notes,
                });
                let extra = match &c.outcome {
                    Outcome::Detected { side, cause, after } => {
                        json!({"side": side, "cause": cause, "detect_ms": ms(*after)})
                    }
                    Outcome::NotDetected { within } => json!({"within_ms": ms(*within)}),
                    Outcome::Kept { proven_after } => json!({"proven_after_ms": ms(*proven_after)}),
                    Outcome::Broken { detail } => json!({"detail": detail}),
                    Outcome::Skipped { reason } => json!({"reason": reason}),
                    Outcome::Error { message } => json!({"message": message}),
                };
                if let (Value::Object(cell), Value::Object(extra)) = (&mut cell, extra) {
                    cell.extend(extra);
                }
                cell
            })
            .collect();
        json!({
            "lab": "hangup",
            "version": env!("CARGO_PKG_VERSION"),
            "command": self.command,
            "machine": {
                "cpu": self.machine.cpu,
                "cpus": self.machine.cpus,
                "kernel": self.machine.kernel,
                "build": self.machine.build,
            },
            "dead_after_ms": ms(self.dead_after),
            "cap_ms": ms(self.cap),
            "heartbeat_ms": self.heartbeat.map(ms),
            "sessions": self.capabilities.sessions,
            "drain": self.capabilities.drain,
            "started_unix_ns": self.started_unix_ns,
            "took_ms": ms(self.took),
            "target": self.target.as_ref().map(|t| json!({
                "command": t.command,
                "port": t.port,
                "payload": String::from_utf8_lossy(&t.payload),
                "payload_streaming": t.payload_streaming.as_deref().map(String::from_utf8_lossy),
                "payload_upload": t.payload_upload.as_deref().map(String::from_utf8_lossy),
            })),
            "time_scale": self.time_scale.map(|t| json!({
                "factor": t.factor,
                "sysctls": t.sysctls().iter().map(|(k, v)| (k.to_string(), Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
                "keepalive_verdict_ms": ms(t.keepalive_verdict()),
                "retries2_timeout_ms": ms(crate::timescale::retries_timeout(t.retries2())),
                "note": "every time in this report is scaled: multiply by factor for Linux's defaults; retries2 is a count, lowered rather than divided",
            })),
            "setups": setups,
            "scenarios": scenarios,
            "cells": cells,
        })
    }

    /// Writes [`Report::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), LabError> {
        let text = serde_json::to_string_pretty(&self.to_json()).map_err(|e| LabError::Report {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|e| LabError::Report {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_micros(420)), "0.42 ms");
        assert_eq!(format_duration(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(format_duration(Duration::from_millis(153)), "153 ms");
        assert_eq!(format_duration(Duration::from_millis(2040)), "2.04 s");
        assert_eq!(format_duration(Duration::from_secs(11)), "11 s");
    }
}
