//! A device that keeps its session with a hangup server, whatever the network does.
//!
//! ```text
//! hangup serve &
//! cargo run -p hangup --example reconnecting_client -- [ADDR] [DEVICE]
//! ```
//!
//! ADDR defaults to 127.0.0.1:7557, DEVICE to `example-device`. It says HELLO on every
//! connect, greets the server with a PING once the session is open, heartbeats at the
//! interval the server grants, and prints every event. Kill the server, restart it,
//! send it SIGTERM (GOAWAY) or start a second copy with the same DEVICE (KICKED) to see
//! each case. The test `tests/example_reconnecting_client.rs` runs [`run`].

use std::io::{self, Write};
use std::time::Duration;

use hangup::client::{ClientEvent, SessionClient, SessionConfig};
use hangup::{Command, LivenessPolicy};

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7557".to_owned());
    let device = args.next().unwrap_or_else(|| "example-device".to_owned());
    run(config(addr, device), &mut io::stdout()).await
}

/// The session this example keeps: heartbeat 5 s, dead-after 10 s on the socket.
pub fn config(addr: String, device: String) -> SessionConfig {
    SessionConfig::new(addr)
        .device(device)
        .heartbeat(Duration::from_secs(5))
        .policy(LivenessPolicy::from_dead_after(Duration::from_secs(10)))
}

/// Keeps the session, printing one line per event to `out`, until another connection
/// takes the device over.
pub async fn run(config: SessionConfig, out: &mut impl Write) -> io::Result<()> {
    let device = config.device.clone().unwrap_or_default();
    let mut client = SessionClient::new(config);
    let sender = client.sender();
    while let Some(event) = client.next().await {
        match &event {
            ClientEvent::Connected { peer } => writeln!(out, "connected to {peer}")?,
            ClientEvent::SessionOpened { session, heartbeat } => {
                writeln!(
                    out,
                    "session {session} open: heartbeat {:?}, server dead after {:?} of silence",
                    heartbeat.interval, heartbeat.dead_after
                )?;
                let greeting = Command::Ping(format!("hello from {device}"));
                sender.send(&greeting).expect("the client is running");
            }
            ClientEvent::Reply(reply) => writeln!(out, "server: {reply}")?,
            ClientEvent::Unrecognized { line, error } => {
                writeln!(out, "server sent `{line}`: {error}")?
            }
            ClientEvent::Lost {
                cause, silent_for, ..
            } => writeln!(
                out,
                "lost the server: {cause}, after {:.3}s of silence",
                silent_for.as_secs_f64()
            )?,
            ClientEvent::GoingAway { .. } => writeln!(out, "the server shut down")?,
            ClientEvent::ConnectFailed { error } => writeln!(out, "could not connect: {error}")?,
            ClientEvent::Reconnecting { delay } => {
                writeln!(out, "reconnecting in {:.3}s", delay.as_secs_f64())?
            }
            ClientEvent::Kicked => writeln!(out, "another connection took the device over")?,
            other => writeln!(out, "{other:?}")?,
        }
        out.flush()?;
    }
    Ok(())
}
