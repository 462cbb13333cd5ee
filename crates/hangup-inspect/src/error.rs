//! The one error type of the crate.

use std::io;

/// Why inspecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The sock_diag netlink socket could not be opened, sent to or read from.
    #[error("sock_diag netlink socket failed")]
    Netlink(#[source] io::Error),
    /// The kernel refused the dump for one address family.
    #[error("kernel refused the sock_diag dump for {family}")]
    Kernel {
        /// `ipv4` or `ipv6`.
        family: &'static str,
        /// The errno the kernel answered with.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("could not decode the sock_diag answer: {0}")]
    Decode(String),
    /// `--state` named no TCP state.
    #[error("unknown tcp state `{given}`; valid states: {valid}")]
    UnknownState {
        /// What was given.
        given: String,
        /// The accepted names, comma separated.
        valid: String,
    },
    /// A watch interval of zero would refresh in a busy loop.
    #[error("watch interval must be greater than zero")]
    ZeroWatchInterval,
    /// Writing the report failed (a closed pipe shows up here as `BrokenPipe`).
    #[error("could not write the report")]
    Output(#[from] io::Error),
    /// The JSON report could not be serialized.
    #[error("could not serialize the json report")]
    Json(#[from] serde_json::Error),
    /// sock_diag exists only on Linux.
    #[error("hangup inspect needs linux sock_diag, which this platform does not have")]
    Unsupported,
}
