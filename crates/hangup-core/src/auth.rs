//! Device tokens (SPEC §4): a device proves it may open (and so take over) its session
//! with `token` = hex HMAC-SHA256(secret, device-id).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], device: &str) -> HmacSha256 {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(device.as_bytes());
    mac
}

/// The token of `device`: 64 lowercase hex digits.
///
/// ```
/// let token = hangup_core::device_token(b"s3cret", "sensor-17");
/// assert!(hangup_core::verify_token(b"s3cret", "sensor-17", &token));
/// assert!(!hangup_core::verify_token(b"s3cret", "sensor-18", &token));
/// ```
pub fn device_token(secret: &[u8], device: &str) -> String {
    hex::encode(mac(secret, device).finalize().into_bytes())
}

/// Whether `token` is the device's token. Case-insensitive hex; the comparison takes the
/// same time wherever the first wrong digit is, so it leaks nothing about the secret.
pub fn verify_token(secret: &[u8], device: &str, token: &str) -> bool {
    match hex::decode(token) {
        Ok(bytes) => mac(secret, device).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

/// The `HELLO` decision on a server with a secret: `Ok` when `token` is the device's,
/// else the message for the `ERR unauthorized` reply.
///
/// ```
/// let token = hangup_core::device_token(b"s3cret", "sensor-17");
/// assert!(hangup_core::authorize(b"s3cret", "sensor-17", Some(&token)).is_ok());
/// assert!(hangup_core::authorize(b"s3cret", "sensor-17", None).is_err());
/// ```
pub fn authorize(secret: &[u8], device: &str, token: Option<&str>) -> Result<(), &'static str> {
    match token {
        None => Err("this server needs token=<hex HMAC-SHA256(secret, device-id)>; `hangup token <device-id>` prints it"),
        Some(token) if !verify_token(secret, device, token) => {
            Err("the token does not match this device id")
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 pins the construction to standard HMAC-SHA256.
    #[test]
    fn matches_rfc_4231() {
        assert_eq!(
            device_token(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn rejects_wrong_short_and_non_hex_tokens() {
        let token = device_token(b"k", "dev");
        assert!(verify_token(b"k", "dev", &token.to_uppercase()));
        assert!(!verify_token(b"other", "dev", &token));
        assert!(!verify_token(b"k", "dev", &token[..62]));
        assert!(!verify_token(b"k", "dev", "zz"));
        assert!(!verify_token(b"k", "dev", ""));
    }
}
