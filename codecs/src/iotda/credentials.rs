//! MQTT CONNECT credentials for an IoTDA device (docs/protocols/iotda.md §1.1).
//!
//! - client id `{device_id}_0_{sig}_{yyyyMMddHH UTC}` [DOC:iot_06_v5_3009]
//! - username `{device_id}`
//! - password `lowercase_hex(HMAC-SHA256(key = timestamp, message = secret))`
//!   [DOC:devg-roma/roma_04_4004]; [JAVA] `IotUtil.java:237`; [C]
//!   `hmac_sha256.c:55`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::EventTime;

/// The client id's password-signature type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureType {
    /// `0`: the platform checks the password only, not the timestamp.
    NoTimestampCheck,
    /// `1`: the platform checks that the timestamp matches its clock first.
    TimestampCheck,
}

impl SignatureType {
    /// The digit in the client id.
    pub fn digit(self) -> char {
        match self {
            SignatureType::NoTimestampCheck => '0',
            SignatureType::TimestampCheck => '1',
        }
    }
}

/// What MQTT CONNECT carries for an IoTDA device.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `{device_id}_0_{sig}_{yyyyMMddHH}`.
    pub client_id: String,
    /// The device id.
    pub username: String,
    /// 64 lower-case hex characters; `None` for X.509 client authentication,
    /// where the SDKs send no password (docs/protocols/iotda.md §1.2).
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `lowercase_hex(HMAC-SHA256(key = timestamp, message = secret))`.
pub fn password(timestamp: &str, secret: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(timestamp.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(secret.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Credentials {
    /// Credentials for secret authentication at instant `now`.
    pub fn with_secret(device_id: &str, secret: &str, sig: SignatureType, now: EventTime) -> Self {
        let ts = now.client_id_timestamp();
        Credentials {
            client_id: format!("{device_id}_0_{}_{ts}", sig.digit()),
            username: device_id.to_owned(),
            password: Some(password(&ts, secret)),
        }
    }

    /// Credentials for X.509 client authentication: same client id shape,
    /// no password.
    pub fn with_certificate(device_id: &str, sig: SignatureType, now: EventTime) -> Self {
        let ts = now.client_id_timestamp();
        Credentials {
            client_id: format!("{device_id}_0_{}_{ts}", sig.digit()),
            username: device_id.to_owned(),
            password: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2_shape() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            password("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn debug_redacts_the_password() {
        let c = Credentials::with_secret(
            "dev",
            "s3cret",
            SignatureType::NoTimestampCheck,
            EventTime::from_unix(0),
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(c.password.as_deref().unwrap()));
        assert!(dbg.contains("<redacted>"));
        assert_eq!(c.client_id, "dev_0_0_1970010100");
    }
}
