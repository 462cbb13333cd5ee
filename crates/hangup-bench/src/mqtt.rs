//! The few MQTT 3.1.1 packets the load workers need to heartbeat against an MQTT broker
//! (`bench scale --peer mosquitto`): CONNECT with a keepalive, CONNACK, PINGREQ and
//! PINGRESP (OASIS MQTT 3.1.1, §2.2 and §3.1, §3.2, §3.12, §3.13). Encoding and
//! checking only; the worker does the I/O.

/// PINGREQ: packet type 12, no flags, remaining length 0 (§3.12).
pub(crate) const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// PINGRESP: packet type 13, remaining length 0 (§3.13).
pub(crate) const PINGRESP: [u8; 2] = [0xD0, 0x00];
/// A CONNACK is always 4 bytes: type 2, remaining length 2, flags, return code (§3.2).
pub(crate) const CONNACK_LEN: usize = 4;
/// The largest remaining length the 4-byte variable-length encoding can carry (§2.2.3).
const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// CONNECT flags: clean session only (no will, no user name or password) (§3.1.2.3).
const CLEAN_SESSION: u8 = 0x02;

/// What was wrong with bytes the broker sent, or a packet we were asked to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MqttError {
    /// Not a CONNACK packet header (`0x20 0x02`).
    NotConnack([u8; 2]),
    /// A CONNACK with a reserved bit set in its acknowledge flags.
    BadConnackFlags(u8),
    /// The broker refused the connection with this return code (1–5 in §3.2.2.3).
    Refused(u8),
    /// A clean-session CONNACK that claims a stored session.
    SessionPresent,
    /// A client id or payload longer than MQTT can carry.
    TooLong(usize),
}

impl std::fmt::Display for MqttError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotConnack([a, b]) => write!(f, "not a CONNACK: {a:#04x} {b:#04x}"),
            Self::BadConnackFlags(flags) => write!(f, "CONNACK flags {flags:#04x}"),
            Self::Refused(code) => write!(f, "CONNACK refused, return code {code}"),
            Self::SessionPresent => f.write_str("CONNACK claims a session for a clean session"),
            Self::TooLong(len) => write!(f, "{len} bytes do not fit an MQTT packet"),
        }
    }
}

impl std::error::Error for MqttError {}

/// Appends the variable-length "remaining length" (7 bits a byte, low bits first, the
/// high bit saying that more bytes follow; at most 4 bytes).
pub(crate) fn encode_remaining_length(mut len: usize, out: &mut Vec<u8>) -> Result<(), MqttError> {
    if len > MAX_REMAINING_LENGTH {
        return Err(MqttError::TooLong(len));
    }
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return Ok(());
        }
    }
}

/// Decodes a remaining length at the start of `bytes`: (length, bytes it took); `None`
/// when `bytes` ends before it does or it runs past 4 bytes.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn decode_remaining_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        len += usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((len, i + 1));
        }
    }
    None
}

/// A CONNECT packet: protocol "MQTT" level 4 (3.1.1), clean session, `keepalive`
/// seconds (the broker drops a client silent for 1.5 × that; 0 turns it off), and
/// `client_id` as the payload's only field.
pub(crate) fn connect(client_id: &str, keepalive_s: u16) -> Result<Vec<u8>, MqttError> {
    let id = client_id.as_bytes();
    let id_len = u16::try_from(id.len()).map_err(|_| MqttError::TooLong(id.len()))?;
    // Variable header: protocol name (length-prefixed), level, flags, keepalive.
    let mut body = Vec::with_capacity(12 + id.len());
    body.extend_from_slice(&[0x00, 0x04]);
    body.extend_from_slice(b"MQTT");
    body.push(0x04);
    body.push(CLEAN_SESSION);
    body.extend_from_slice(&keepalive_s.to_be_bytes());
    // Payload: the client identifier, length-prefixed.
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = Vec::with_capacity(body.len() + 5);
    packet.push(0x10);
    encode_remaining_length(body.len(), &mut packet)?;
    packet.extend_from_slice(&body);
    Ok(packet)
}

/// Checks the 4 bytes of a CONNACK to a clean-session CONNECT: accepted (return code 0)
/// and no stored session.
pub(crate) fn check_connack(packet: &[u8; CONNACK_LEN]) -> Result<(), MqttError> {
    if packet[..2] != [0x20, 0x02] {
        return Err(MqttError::NotConnack([packet[0], packet[1]]));
    }
    let (flags, code) = (packet[2], packet[3]);
    if flags & !0x01 != 0 {
        return Err(MqttError::BadConnackFlags(flags));
    }
    if code != 0 {
        return Err(MqttError::Refused(code));
    }
    if flags & 0x01 != 0 {
        return Err(MqttError::SessionPresent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_is_the_packet_of_the_standard() {
        // §3.1: fixed header 0x10, remaining length 15 = 10 (variable header) + 2 + 3.
        let packet = connect("abc", 60).unwrap();
        assert_eq!(
            packet,
            [
                0x10, 15, // fixed header
                0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
                0x04, // level 4 = 3.1.1
                0x02, // clean session
                0x00, 60, // keepalive, big-endian
                0x00, 0x03, b'a', b'b', b'c', // client id
            ]
        );
        let keepalive = connect("x", 0x1234).unwrap();
        assert_eq!(&keepalive[10..12], &[0x12, 0x34]);
    }

    #[test]
    fn connect_with_a_long_client_id_takes_a_two_byte_length() {
        let id = "d".repeat(200);
        let packet = connect(&id, 1).unwrap();
        // 10 + 2 + 200 = 212 = 0xD4: 0x54 | 0x80, then 1.
        assert_eq!(&packet[..3], &[0x10, 0xD4, 0x01]);
        assert_eq!(packet.len(), 3 + 212);
        assert_eq!(decode_remaining_length(&packet[1..]), Some((212, 2)));
        assert_eq!(&packet[15..], id.as_bytes());
        assert_eq!(
            connect(&"d".repeat(65_536), 1),
            Err(MqttError::TooLong(65_536))
        );
    }

    #[test]
    fn remaining_length_round_trips_at_every_byte_boundary() {
        // The boundaries of §2.2.3's table.
        for (len, bytes) in [
            (0, vec![0x00]),
            (127, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xFF, 0x7F]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xFF, 0xFF, 0x7F]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (268_435_455, vec![0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = Vec::new();
            encode_remaining_length(len, &mut out).unwrap();
            assert_eq!(out, bytes, "{len}");
            assert_eq!(decode_remaining_length(&out), Some((len, out.len())));
        }
        let mut out = Vec::new();
        assert_eq!(
            encode_remaining_length(268_435_456, &mut out),
            Err(MqttError::TooLong(268_435_456))
        );
        assert_eq!(decode_remaining_length(&[0x80, 0x80]), None);
        assert_eq!(
            decode_remaining_length(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            None
        );
    }

    #[test]
    fn connack_accepted_refused_or_not_a_connack() {
        assert_eq!(check_connack(&[0x20, 0x02, 0x00, 0x00]), Ok(()));
        assert_eq!(
            check_connack(&[0x20, 0x02, 0x00, 0x05]),
            Err(MqttError::Refused(5))
        );
        assert_eq!(
            check_connack(&[0x20, 0x02, 0x01, 0x00]),
            Err(MqttError::SessionPresent)
        );
        assert_eq!(
            check_connack(&[0x20, 0x02, 0x02, 0x00]),
            Err(MqttError::BadConnackFlags(0x02))
        );
        assert_eq!(
            check_connack(&[0xD0, 0x00, 0x20, 0x02]),
            Err(MqttError::NotConnack([0xD0, 0x00]))
        );
    }

    #[test]
    fn ping_packets_are_two_bytes_with_no_remaining_length() {
        assert_eq!(PINGREQ, [0xC0, 0x00]);
        assert_eq!(PINGRESP, [0xD0, 0x00]);
        assert_eq!(decode_remaining_length(&PINGREQ[1..]), Some((0, 1)));
    }
}
