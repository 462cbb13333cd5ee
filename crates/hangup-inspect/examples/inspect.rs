//! Prints the inspector's report for this host, without the `hangup` binary.
//!
//! `cargo run -p hangup-inspect --example inspect [-- --json] [PORT]`

fn main() -> Result<(), hangup_inspect::InspectError> {
    let mut options = hangup_inspect::Options::default();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--json" => options.json = true,
            port => options.port = port.parse().ok(),
        }
    }
    hangup_inspect::run(&options, &mut std::io::stdout().lock())
}
