//! `hangup serve --config FILE`: a TOML file with the same keys as the flags.
//!
//! The file is turned into flags placed before the command line's own, so that one parser
//! (clap's) checks both, and flags given on the command line win. Each key is checked on
//! its own first, so an error names the file and the key, not a flag the user never typed.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};
use clap::{ArgAction, CommandFactory};

use crate::args::Cli;

/// Expands `serve --config FILE` in `argv`; other command lines come back unchanged.
pub fn expand(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("serve") {
        return Ok(argv);
    }
    let Some(path) = config_path(&argv[2..]) else {
        return Ok(argv);
    };
    let flags = flags_from_file(Path::new(&path))?;
    let mut expanded = argv[..2].to_vec();
    expanded.extend(flags);
    expanded.extend(argv[2..].iter().cloned());
    Ok(expanded)
}

/// The value of `--config FILE` or `--config=FILE`.
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            return None;
        }
        if arg == "--config" {
            return args.next().cloned();
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(path.into());
        }
    }
    None
}

fn flags_from_file(path: &Path) -> anyhow::Result<Vec<OsString>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the config file {shown} (--config)"))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config file {shown} is not valid TOML"))?;
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .expect("`serve` is a subcommand");
    let keys: Vec<&str> = serve
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "config" | "help"))
        .collect();
    let mut flags = Vec::new();
    for (key, value) in &table {
        let Some(arg) = serve.get_arguments().find(|a| a.get_long() == Some(key)) else {
            bail!(
                "config file {shown}: unknown key `{key}`; the keys are the flags of `hangup serve`: {}",
                keys.join(", ")
            );
        };
        if key == "config" {
            bail!("config file {shown}: `config` cannot be set inside a config file");
        }
        let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
        let value = match (value, takes_value) {
            (toml::Value::Boolean(true), false) => None,
            (toml::Value::Boolean(false), false) => continue,
            (_, false) => bail!("config file {shown}: key `{key}` is a switch: write `{key} = true` or `{key} = false`"),
            (toml::Value::String(s), true) => Some(s.clone()),
            (toml::Value::Integer(n), true) => Some(n.to_string()),
            (toml::Value::Float(x), true) => Some(x.to_string()),
            (toml::Value::Boolean(b), true) => Some(if *b { "on" } else { "off" }.to_owned()),
            (other, true) => bail!(
                "config file {shown}: key `{key}` takes a single value (a string or a number), not a {}",
                other.type_str()
            ),
        };
        let mut pair = vec![OsString::from(format!("--{key}"))];
        pair.extend(value.map(OsString::from));
        // Check this key alone, so that a bad value is reported against the file.
        let mut probe = vec![OsString::from("hangup"), OsString::from("serve")];
        probe.extend(pair.iter().cloned());
        if let Err(err) = Cli::command().try_get_matches_from(probe) {
            let rendered = err.kind().as_str().unwrap_or("invalid value").to_owned();
            let detail = err.to_string();
            let detail = detail
                .lines()
                .find(|l| l.starts_with("error:"))
                .map_or(rendered, |l| l.trim_start_matches("error: ").to_owned());
            bail!("config file {shown}: key `{key}`: {detail}");
        }
        flags.extend(pair);
    }
    Ok(flags)
}
