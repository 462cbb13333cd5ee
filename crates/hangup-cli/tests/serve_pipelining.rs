//! Pipelined requests whose replies pass the reply high-water mark (64 KiB) are all
//! answered, however fast the socket drains: input held back at the mark resumes.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use hangup_core::Reply;

#[test]
fn every_pipelined_status_line_is_answered() {
    let server = TestServer::start(&[]);
    let mut client = LineClient::connect(server.addr());
    // ~63 KB of requests, ~560 KB of replies: several times over the mark.
    let count = 9_000;
    client.send_raw("STATUS\n".repeat(count).as_bytes());
    for i in 0..count {
        let line = client
            .try_read_line()
            .unwrap_or_else(|err| panic!("reply {i} of {count} never came: {err}"))
            .unwrap_or_else(|| panic!("the server closed after {i} of {count} replies"));
        assert!(
            matches!(Reply::parse(&line), Ok(Reply::Status(_))),
            "reply {i}: {line}"
        );
    }
    client.assert_alive("after-pipeline");
}
