//! `SessionClient` against small line servers written here, on real loopback sockets:
//! WELCOME and the granted heartbeat, reconnecting with HELLO, a backoff that only a
//! WELCOME resets, GOAWAY, KICKED, a server's FIN, RST or silence while idle, and a
//! half-close that still gets its replies.

use std::time::{Duration, Instant};

use hangup::client::{Backoff, ClientEvent, SessionClient, SessionConfig};
use hangup::{parse_line, Cause, Command, Heartbeat, LivenessPolicy, Reply, SessionId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// How long anything that should happen may take on a busy machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// One accepted connection, seen from the server.
struct Peer {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = tokio::time::timeout(PATIENCE, listener.accept())
            .await
            .expect("the client connects")
            .unwrap();
        Self::new(stream)
    }

    fn new(stream: TcpStream) -> Peer {
        let (read, write) = stream.into_split();
        Peer {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    /// The next line and the command it parses as; `None` at end of input.
    async fn command(&mut self) -> Option<(String, Command)> {
        let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("the client says something")
            .ok()??;
        let command = parse_line(line.as_bytes(), u64::MAX)
            .unwrap()
            .expect("a command, not a comment");
        Some((line, command))
    }

    async fn send(&mut self, reply: &Reply) {
        let mut bytes = Vec::new();
        reply.encode(&mut bytes);
        self.write.write_all(&bytes).await.unwrap();
    }

    /// Reads `HELLO` and answers `WELCOME` with the heartbeat this server grants.
    async fn welcome(&mut self, session: u64, granted: Duration) -> String {
        let (line, command) = self.command().await.expect("HELLO");
        assert!(matches!(command, Command::Hello { .. }), "{line}");
        let heartbeat = Heartbeat::grant(Some(granted));
        self.send(&Reply::Welcome(SessionId(session), heartbeat))
            .await;
        line
    }
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

fn config(addr: &str) -> SessionConfig {
    SessionConfig::new(addr)
        .device("dev-1")
        .heartbeat(Duration::from_secs(30))
        .backoff(Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(500),
        ))
}

async fn next_event(client: &mut SessionClient) -> ClientEvent {
    tokio::time::timeout(PATIENCE, client.next())
        .await
        .expect("an event in time")
        .expect("the client goes on")
}

/// Events until one matches, returning it; panics on `Lost` unless it is the match.
async fn until(
    client: &mut SessionClient,
    mut wanted: impl FnMut(&ClientEvent) -> bool,
) -> ClientEvent {
    loop {
        let event = next_event(client).await;
        if wanted(&event) {
            return event;
        }
        assert!(
            !matches!(event, ClientEvent::Lost { .. }),
            "unexpected {event:?}"
        );
    }
}

#[tokio::test]
async fn welcome_opens_the_session_and_pings_follow_the_granted_heartbeat() {
    let (listener, addr) = listen().await;
    // The client proposes 30 s; the server grants 1 s, and that is what counts.
    let granted = Duration::from_secs(1);
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        let hello = peer.welcome(0x2a, granted).await;
        let mut pings = Vec::new();
        while pings.len() < 3 {
            let (_, command) = peer.command().await.expect("PINGs");
            assert_eq!(command, Command::Ping(String::new()));
            pings.push(Instant::now());
            peer.send(&Reply::Pong(String::new())).await;
        }
        (hello, pings)
    });
    let mut client = SessionClient::new(config(&addr));
    assert!(matches!(
        next_event(&mut client).await,
        ClientEvent::Connected { .. }
    ));
    let ClientEvent::SessionOpened { session, heartbeat } = next_event(&mut client).await else {
        panic!("no WELCOME")
    };
    assert_eq!(session, SessionId(0x2a));
    assert_eq!(heartbeat.interval, granted);
    assert_eq!(heartbeat.dead_after, Duration::from_millis(1500));
    let welcomed = Instant::now();
    for _ in 0..3 {
        let pong = until(&mut client, |e| matches!(e, ClientEvent::Reply(_))).await;
        assert!(matches!(pong, ClientEvent::Reply(Reply::Pong(ref d)) if d.is_empty()));
    }
    let (hello, pings) = server.await.unwrap();
    assert_eq!(hello, "HELLO dev-1 heartbeat=30");
    // A PING after each heartbeat of our silence: never early, and not much late.
    let mut previous = welcomed;
    for ping in pings {
        let gap = ping - previous;
        assert!(
            gap >= granted.mul_f64(0.7) && gap <= granted * 3,
            "a PING {gap:?} after the last one, heartbeat {granted:?}"
        );
        previous = ping;
    }
}

#[tokio::test]
async fn after_the_server_closes_the_client_reconnects_and_says_hello_again() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut hellos = Vec::new();
        for session in 1..=2 {
            let mut peer = Peer::accept(&listener).await;
            hellos.push(peer.welcome(session, Duration::from_secs(30)).await);
            // Dropping the peer closes the connection: FIN.
        }
        hellos
    });
    let mut client = SessionClient::new(config(&addr).token("abcd"));
    let first = until(&mut client, |e| {
        matches!(e, ClientEvent::SessionOpened { .. })
    })
    .await;
    assert!(matches!(
        first,
        ClientEvent::SessionOpened {
            session: SessionId(1),
            ..
        }
    ));
    let lost = until(&mut client, |e| matches!(e, ClientEvent::Lost { .. })).await;
    assert!(
        matches!(
            lost,
            ClientEvent::Lost {
                cause: Cause::PeerClosed,
                ..
            }
        ),
        "{lost:?}"
    );
    assert!(matches!(
        next_event(&mut client).await,
        ClientEvent::Reconnecting { .. }
    ));
    let second = until(&mut client, |e| {
        matches!(e, ClientEvent::SessionOpened { .. })
    })
    .await;
    assert!(matches!(
        second,
        ClientEvent::SessionOpened {
            session: SessionId(2),
            ..
        }
    ));
    let hellos = server.await.unwrap();
    assert_eq!(hellos, vec!["HELLO dev-1 token=abcd heartbeat=30"; 2]);
}

/// Ceilings of the backoff after each of `rounds` reconnects to a server that does
/// `serve` with every connection.
async fn ceilings_after_reconnects<F, Fut>(rounds: usize, serve: F) -> Vec<Duration>
where
    F: Fn(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            serve(Peer::new(stream)).await;
        }
    });
    let backoff = Backoff::new(Duration::from_millis(2), Duration::from_secs(10));
    let mut client = SessionClient::new(config(&addr).backoff(backoff));
    let mut ceilings = Vec::new();
    while ceilings.len() < rounds {
        let ceiling = client.config().backoff.ceiling();
        let event = next_event(&mut client).await;
        if let ClientEvent::Reconnecting { delay } = event {
            assert!(delay <= ceiling, "{delay:?} above the ceiling {ceiling:?}");
            ceilings.push(client.config().backoff.ceiling());
        }
    }
    ceilings
}

#[tokio::test]
async fn a_server_that_accepts_and_closes_gets_ever_slower_reconnects() {
    // Connecting succeeds every time, but no WELCOME comes: the backoff keeps growing.
    let ceilings = ceilings_after_reconnects(5, |peer| async move { drop(peer) }).await;
    let ms = Duration::from_millis;
    assert_eq!(ceilings, vec![ms(4), ms(8), ms(16), ms(32), ms(64)]);
}

#[tokio::test]
async fn a_welcome_resets_the_backoff() {
    let ceilings = ceilings_after_reconnects(4, |mut peer| async move {
        peer.welcome(1, Duration::from_secs(30)).await;
    })
    .await;
    assert_eq!(ceilings, vec![Duration::from_millis(4); 4]);
}

#[tokio::test]
async fn goaway_then_close_reconnects_with_backoff() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.welcome(1, Duration::from_secs(30)).await;
        peer.send(&Reply::GoawayShutdown).await;
        // In-flight replies still come after GOAWAY.
        peer.send(&Reply::Accepted(9)).await;
        drop(peer);
        let mut peer = Peer::accept(&listener).await;
        peer.welcome(2, Duration::from_secs(30)).await
    });
    let mut client = SessionClient::new(config(&addr));
    until(&mut client, |e| {
        matches!(e, ClientEvent::SessionOpened { .. })
    })
    .await;
    assert!(matches!(
        next_event(&mut client).await,
        ClientEvent::Reply(Reply::GoawayShutdown)
    ));
    assert!(matches!(
        next_event(&mut client).await,
        ClientEvent::Reply(Reply::Accepted(9))
    ));
    assert!(matches!(
        next_event(&mut client).await,
        ClientEvent::GoingAway { .. }
    ));
    assert!(matches!(
        next_event(&mut client).await,
        ClientEvent::Reconnecting { .. }
    ));
    let again = until(&mut client, |e| {
        matches!(e, ClientEvent::SessionOpened { .. })
    })
    .await;
    assert!(matches!(
        again,
        ClientEvent::SessionOpened {
            session: SessionId(2),
            ..
        }
    ));
    assert!(server.await.unwrap().starts_with("HELLO dev-1 "));
}

#[tokio::test]
async fn kicked_stops_the_client_for_good() {
    let (listener, addr) = listen().await;
    let mut client = SessionClient::new(config(&addr));
    let server = async {
        let mut peer = Peer::accept(&listener).await;
        peer.welcome(1, Duration::from_secs(30)).await;
        peer.send(&Reply::KickedTakeover).await;
        peer
    };
    let events = async {
        let mut events = Vec::new();
        while let Some(event) = tokio::time::timeout(PATIENCE, client.next()).await.unwrap() {
            events.push(event);
        }
        events
    };
    let (peer, events) = tokio::join!(server, events);
    assert!(
        matches!(
            events.as_slice(),
            [
                ClientEvent::Connected { .. },
                ClientEvent::SessionOpened { .. },
                ClientEvent::Kicked
            ]
        ),
        "{events:?}"
    );
    drop(peer);
    assert!(client.next().await.is_none(), "stopped stays stopped");
    // And it does not come back.
    let again = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(again.is_err(), "the kicked client reconnected");
}

#[tokio::test]
async fn a_reset_is_noticed_while_idle() {
    let (listener, addr) = listen().await;
    let mut client = SessionClient::new(config(&addr));
    let server = async {
        let (stream, _) = listener.accept().await.unwrap();
        let mut peer = Peer::new(stream);
        peer.welcome(1, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stream = peer
            .lines
            .into_inner()
            .into_inner()
            .reunite(peer.write)
            .unwrap();
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream); // RST
    };
    let lost = async { until(&mut client, |e| matches!(e, ClientEvent::Lost { .. })).await };
    let ((), lost) = tokio::join!(server, lost);
    assert!(
        matches!(
            lost,
            ClientEvent::Lost {
                cause: Cause::PeerReset,
                ..
            }
        ),
        "{lost:?}"
    );
}

#[tokio::test]
async fn a_silent_server_is_dead_after_one_and_a_half_granted_heartbeats() {
    let (listener, addr) = listen().await;
    let granted = Duration::from_secs(1);
    tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.welcome(1, granted).await;
        // Reads the PINGs, answers nothing, keeps the connection open.
        while peer.command().await.is_some() {}
    });
    let mut client = SessionClient::new(config(&addr));
    until(&mut client, |e| {
        matches!(e, ClientEvent::SessionOpened { .. })
    })
    .await;
    let welcomed = Instant::now();
    let lost = until(&mut client, |e| matches!(e, ClientEvent::Lost { .. })).await;
    let ClientEvent::Lost {
        cause, silent_for, ..
    } = lost
    else {
        unreachable!()
    };
    let dead_after = granted.mul_f64(1.5);
    assert_eq!(cause, Cause::HeartbeatMissed);
    assert!(silent_for >= dead_after, "{silent_for:?}");
    assert!(welcomed.elapsed() <= dead_after + Duration::from_secs(2));
}

#[tokio::test]
async fn after_finish_the_client_half_closes_and_still_gets_its_replies() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        let mut pending = Vec::new();
        // Answer only once the client's input ended, as a server finishing jobs would.
        while let Some((_, command)) = peer.command().await {
            pending.push(command);
        }
        for command in pending {
            if let Command::Ping(data) = command {
                peer.send(&Reply::Pong(data)).await;
            }
        }
    });
    let policy = LivenessPolicy::from_dead_after(Duration::from_secs(5));
    let mut client = SessionClient::new(SessionConfig::new(addr).policy(policy));
    let sender = client.sender();
    sender.send(&Command::Ping("one".into())).unwrap();
    sender.send_line("ping two").unwrap();
    sender.finish().unwrap();
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(PATIENCE, client.next()).await.unwrap() {
        events.push(event);
    }
    assert!(
        matches!(
            events.as_slice(),
            [
                ClientEvent::Connected { .. },
                ClientEvent::Reply(Reply::Pong(one)),
                ClientEvent::Reply(Reply::Pong(two)),
                ClientEvent::Finished,
            ] if one == "one" && two == "two"
        ),
        "{events:?}"
    );
}
