//! The lab's error type.

use std::io;
use std::path::PathBuf;

/// Why the lab (or one of its cells) could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The lab was started without root; network namespaces need it.
    #[error(
        "the fault lab needs root: it creates network namespaces and a veth pair (try `sudo hangup lab`)"
    )]
    NotRoot,
    /// iproute2's `ip` is not on PATH.
    #[error(
        "iproute2 is needed for network namespaces: `ip` was not found on PATH (install it, e.g. `apt-get install iproute2`)"
    )]
    NoIproute2,
    /// Not Linux: there are no network namespaces.
    #[error("the fault lab needs Linux network namespaces")]
    Unsupported,
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// The arguments, space-separated.
        args: String,
        /// What `ip` said.
        stderr: String,
    },
    /// A process could not be started.
    #[error("could not start {what}: {source}")]
    Spawn {
        /// What was started.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A process did not do what it should have in time (its stderr tail is attached).
    #[error("{what}; last lines of {process}'s stderr:\n{log}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The lab's name for the process.
        process: String,
        /// The tail of its stderr.
        log: String,
    },
    /// SIGINT, SIGTERM or SIGHUP arrived: the run stopped and cleaned up.
    #[error("interrupted; everything the lab created was removed")]
    Interrupted,
    /// The run was failed on purpose half-way, to test the cleanup.
    #[error("injected failure (--fail-after-start): the run stops half-way, on purpose")]
    Injected,
    /// A name that is no scenario or set-up.
    #[error("unknown {kind} `{name}`; expected one of: {expected}")]
    UnknownName {
        /// `scenario` or `set-up`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: String,
    },
    /// Writing the JSON or SVG report failed.
    #[error("could not write {}: {message}", path.display())]
    Report {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl LabError {
    /// Whether the whole run must stop; otherwise only the cell failed (it is reported
    /// as an error in its place and the run goes on).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, LabError::Timeout { .. } | LabError::Spawn { .. })
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}
